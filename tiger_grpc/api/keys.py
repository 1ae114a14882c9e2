"""API keys with scopes and limits: the key file (`TIGER_KEYS_FILE`), read by the
server and written by `tiger keys add`.

TOML, one table per key; only a key's SHA-256 is kept, never the key:

    [[key]]
    name = "billing-service"          # shown in logs and metrics, never the key
    sha256 = "9f86d08...15b0f00a08"   # hex SHA-256 of the key
    scopes = ["generate"]             # any of: generate, train, import
    requests_per_minute = 600         # optional
    tokens_per_minute = 200000        # optional, prompt + generated tokens
    max_concurrent = 8                # optional, streams at once

A file that does not parse is refused with its line and the reason.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCOPES = ("generate", "train", "import")
# What each RPC needs; the HTTP routes call these RPCs.
METHOD_SCOPES = {
    "Generate": "generate",
    "ListModels": "generate",
    "Train": "train",
    "ImportModel": "import",
}
LIMITS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")
RESERVED = "TIGER_API_KEY"  # the name the environment's all-scope key goes by
MAX_KEY_CHARS = 512  # longer is no key of ours: refused before hashing
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEADER = re.compile(r"^\s*\[\[\s*key\s*\]\]")


class KeyFileError(ValueError):
    """The key file does not parse: the message has the line and the reason."""


@dataclass(frozen=True)
class Key:
    name: str
    sha256: bytes
    scopes: frozenset[str]
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    @property
    def limited(self) -> bool:
        return any(getattr(self, limit) is not None for limit in LIMITS)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse_keys(text: str) -> list[Key]:
    """The keys of a key file's text; raises `KeyFileError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeyFileError(f"not TOML: {exc}") from None
    unknown = set(data) - {"key"}
    if unknown:
        raise KeyFileError(f"unknown table {sorted(unknown)[0]!r}: only [[key]]")
    tables = data.get("key", [])
    if not isinstance(tables, list):
        raise KeyFileError("`key` must be an array of tables: write [[key]]")
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if _HEADER.match(line)]

    def where(i: int) -> str:
        return f"line {lines[i]}" if i < len(lines) else f"key {i + 1}"

    keys: list[Key] = []
    for i, table in enumerate(tables):
        try:
            keys.append(_key(table))
        except ValueError as exc:
            raise KeyFileError(f"{where(i)}: {exc}") from None
    names: dict[str, int] = {}  # each name and digest: the first key with it
    digests: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        if key.name == RESERVED:
            raise KeyFileError(
                f"{where(i)}: the name {RESERVED} is the environment key's"
            )
        same_name, same_digest = names.get(key.name), digests.get(key.sha256)
        if same_name is not None and (same_digest is None or same_name <= same_digest):
            raise KeyFileError(f"{where(i)}: the name {key.name!r} is used twice")
        if same_digest is not None:
            raise KeyFileError(
                f"{where(i)}: key {key.name!r} has the same sha256 as "
                f"{keys[same_digest].name!r}"
            )
        names[key.name], digests[key.sha256] = i, i
    return keys


def _key(table: Any) -> Key:
    if not isinstance(table, dict):
        raise ValueError("a key must be a table")
    extra = set(table) - {"name", "sha256", "scopes", *LIMITS}
    if extra:
        raise ValueError(f"unknown field {sorted(extra)[0]!r}")
    name = table.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            "`name` must be 1 to 64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit"
        )
    hexdigest = table.get("sha256")
    if not isinstance(hexdigest, str) or not re.fullmatch(
        r"[0-9a-fA-F]{64}", hexdigest
    ):
        raise ValueError(f"key {name!r}: `sha256` must be 64 hex digits")
    scopes = table.get("scopes")
    if (
        not isinstance(scopes, list)
        or not scopes
        or not all(isinstance(s, str) and s in SCOPES for s in scopes)
    ):
        raise ValueError(
            f"key {name!r}: `scopes` must be a non-empty list of {', '.join(SCOPES)}"
        )
    limits = {}
    for limit in LIMITS:
        value = table.get(limit)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"key {name!r}: `{limit}` must be a positive integer")
        limits[limit] = value
    return Key(name, bytes.fromhex(hexdigest), frozenset(scopes), **limits)


def read_keys(path: Path) -> list[Key]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    return parse_keys(text)


def entry(name: str, key: str, scopes: Iterable[str], **limits: int | None) -> str:
    """A key's table, as `tiger keys add` appends it."""
    lines = [
        "[[key]]",
        f'name = "{name}"',
        f'sha256 = "{digest(key).hex()}"',
        "scopes = [" + ", ".join(f'"{s}"' for s in scopes) + "]",
        *(f"{k} = {v}" for k, v in limits.items() if v is not None),
    ]
    return "\n".join(lines) + "\n"


def add_key(path: Path, name: str, scopes: Iterable[str], **limits: int | None) -> str:
    """Makes a random key, appends its entry to the key file (created with 0600
    permissions) and returns the key: the only time it is seen."""
    key = "tgr_" + secrets.token_urlsafe(32)
    existing = path.read_text() if path.exists() else ""
    text = entry(name, key, list(scopes), **limits)
    separator = "\n" if existing and not existing.endswith("\n\n") else ""
    parse_keys(existing + separator + text)  # the file stays one that parses
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a") as out:
        out.write(separator + text)
    return key
