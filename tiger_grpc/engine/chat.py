"""The serving path's tokenizer: `tokenizers` and the model's Jinja chat template,
without transformers (whose import brings PyTorch: some 500 MB resident in a
server that never runs it).

It offers what serving uses of a transformers tokenizer (`encode`, `decode`,
`apply_chat_template`, `convert_ids_to_tokens`, `all_special_ids`,
`backend_tokenizer`, `len`), read from the files transformers saves: a fast
tokenizer's `tokenizer.json`, `tokenizer_config.json`, and the chat template
(`chat_template.jinja`, or the config's `chat_template`). The template is rendered
the way transformers renders it (a sandboxed Jinja environment with
`trim_blocks`, `lstrip_blocks`, `raise_exception` and `strftime_now`), and the
rendered text is tokenized without adding special tokens, as there. A checkpoint
without `tokenizer.json` (a slow tokenizer only) is served through transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer


class TemplateError(ValueError):
    """A chat template refused the conversation (its `raise_exception`)."""


class ChatTokenizer:
    def __init__(self, directory: Path) -> None:
        self.backend_tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self._tokens = {
            name: _content(config.get(name))
            for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        # transformers' `all_special_ids`: the named special tokens and the
        # additional ones (not every added token marked special).
        names = {*self._tokens.values(), *_additional(directory, config)}
        found = (self.backend_tokenizer.token_to_id(n) for n in names if n)
        self.all_special_ids = sorted({i for i in found if i is not None})
        self.chat_template_source = _template_source(directory, config)
        self._template = _compile(self.chat_template_source)

    def __len__(self) -> int:
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        encoding = self.backend_tokenizer.encode(
            text, add_special_tokens=add_special_tokens
        )
        return list(encoding.ids)

    def decode(
        self,
        ids: Iterable[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> str:
        del clean_up_tokenization_spaces  # never asked for on the serving path
        return str(
            self.backend_tokenizer.decode(
                list(ids), skip_special_tokens=skip_special_tokens
            )
        )

    def convert_ids_to_tokens(self, token_id: int) -> str | None:
        token = self.backend_tokenizer.id_to_token(token_id)
        return None if token is None else str(token)

    def apply_chat_template(
        self,
        conversation: list[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> Any:
        if self._template is None:
            raise TemplateError("the model has no chat template")
        text = self._template.render(
            messages=conversation,
            add_generation_prompt=add_generation_prompt,
            **({"tools": tools} if tools else {}),
            **self._tokens,
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text


def load_chat_tokenizer(directory: Path) -> Any:
    """A `ChatTokenizer` when the checkpoint has a fast tokenizer's files, else
    transformers' own tokenizer."""
    if (directory / "tokenizer.json").is_file():
        return ChatTokenizer(directory)
    from ..runtime.ml import IMPORT_LOCK

    with IMPORT_LOCK:
        from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(directory)


def _content(token: Any) -> str | None:
    """A special token as tokenizer_config.json gives it (a string, or an
    AddedToken's dict)."""
    if isinstance(token, dict):
        return str(token.get("content"))
    return None if token is None else str(token)


def _additional(directory: Path, config: Mapping[str, Any]) -> list[str]:
    listed = list(config.get("additional_special_tokens") or [])
    path = directory / "special_tokens_map.json"
    if path.is_file():
        listed += json.loads(path.read_text()).get("additional_special_tokens") or []
    return [name for name in (_content(t) for t in listed) if name]


def _template_source(directory: Path, config: Mapping[str, Any]) -> str | None:
    path = directory / "chat_template.jinja"
    if path.is_file():
        return path.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _compile(source: str | None) -> Any:
    if source is None:
        return None
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals.update(
        raise_exception=raise_exception, strftime_now=strftime_now
    )
    return environment.from_string(source)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    """transformers' `tojson` (no HTML escaping, as chat templates expect)."""
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=separators,
        sort_keys=sort_keys,
    )
