"""The server end to end on a device (`make gpu-check`'s `--serve`, or alone).

`tiger-server` (`TIGER_DEVICE=<device>`, `TIGER_PRECISION=--precision`, fp16 by
default) and `tiger-gateway`
start on free local ports, serving a prepared model of a store (`--home`,
`--model`), and are driven over HTTP as clients drive them:

1. Once `/readyz` says it is loaded, `/v1/models` names the provider the model
   runs on: a CUDA run that got anything else fails.
2. The seed guide's stream (`/v1/generate_response`, NDJSON), and a stream of
   128 tokens alone: time to first token, tokens/s.
3. A stream dropped by its client after three deltas; then eight streams at once,
   their aggregate tokens/s; then no sequence may still hold a slot.
4. A three-turn chat (`/v1/chat/completions`): turns 2 and 3 report the earlier
   turns' prompt as cached (the prefix cache's copies on the device).
5. A JSON-schema answer (`response_format`): it parses and has the schema's keys.
6. With `--import-gguf [FILE]` (the embedded model's own file if none is named),
   the server on the device imports FILE over HTTP (`/v1/models/import`, as a
   user does: on CUDA the optimum export runs on the GPU where it has room) and
   serves it beside the model: how long the import took, where the new model
   runs, the GPU's memory in use before and after (every process's, as
   `nvidia-smi` says), and a greedy answer from each model, which must be the
   same when FILE is the one the model was prepared from (by its name in the
   model's source). The imported model (or what a cut-off import left) is
   removed from the store after; a failed import fails the check, steps 1-5
   reported as they went.

Every request is greedy, so with `--against cpu` the same requests go to a second
server on the CPU provider (same graph) and the answers are compared word for word
(fp16 on two devices may part at a near tie; where they part is reported).
Writes serve.json and serve.md to `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MODEL_ID, default_home
from ..models.precision import ON_CUDA, PRECISIONS, on_cuda
from ..models.store import ModelStore
from .serve_calls import (
    QUESTION,
    CheckFailed,
    ask,
    chat,
    import_beside,
    listed,
    ready,
    stream,
)
from .serve_report import REQUIRED, agreement, answers, markdown, verdicts
from .stack import API_KEY, served

TOPICS = ("rivers", "bread", "stars", "chess", "rain", "music", "bees", "tea")
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
    },
    "required": list(REQUIRED),
    "additionalProperties": False,
}


@contextmanager
def served_on(
    home: Path, model: str, device: str, workdir: Path, precision: str
) -> Iterator[str]:
    """The server (`model` loaded at start, its `precision` graph) and the gateway
    on `device`, their logs in `workdir/<device>`; yields the gateway's base URL."""
    with served(
        home,
        workdir / device,
        ("--no-prepare", "--preload", model),
        "INFO",  # each request's line, with its code and time
        TIGER_DEVICE=device,
        TIGER_PRECISION=precision,
    ) as (_, port):
        yield f"http://127.0.0.1:{port}"


async def streams(session: Any, url: str, model: str) -> dict[str, Any]:
    """Steps 2 and 3: one stream at a time, a dropped one, then eight at once."""
    await stream(session, url, ask(model, "Hi", 1))  # one-time costs, before timing
    report = {
        "seed_stream": await stream(session, url, ask(model, QUESTION, 48)),
        "one_stream": await stream(
            session, url, ask(model, "Write a long story about a lighthouse.", 128)
        ),
        "dropped": await stream(
            session, url, ask(model, "Tell me a long story about a dragon.", 400), 3
        ),
    }
    started = time.monotonic()
    many = await asyncio.gather(
        *(
            stream(session, url, ask(model, f"Write two sentences about {t}.", 48))
            for t in TOPICS
        )
    )
    tokens = sum(m["usage"]["output_tokens"] for m in many)
    report["eight_streams"] = {
        "texts": [m["text"] for m in many],
        "output_tokens": tokens,
        "aggregate_tokens_per_s": round(tokens / (time.monotonic() - started), 1),
        "ttft_ms": [m["ttft_ms"] for m in many],
    }
    return report


async def chat_turns(session: Any, url: str, model: str) -> list[dict[str, Any]]:
    """Step 4: three turns of one chat, each sent whole (as OpenAI's clients do)."""
    messages = [
        {"role": "system", "content": "You are a geography teacher. " * 20},
        {"role": "user", "content": "Name a large river in Europe."},
    ]
    turns = []
    for follow_up in ("Which countries does it cross?", "How long is it?", None):
        body = {"model": model, "messages": messages, "max_tokens": 24}
        reply = await chat(session, url, body)
        usage = reply["usage"]
        content = reply["choices"][0]["message"]["content"]
        turns.append(
            {
                "text": content,
                "prompt_tokens": usage["prompt_tokens"],
                "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
            }
        )
        if follow_up:
            messages += [
                {"role": "assistant", "content": content},
                {"role": "user", "content": follow_up},
            ]
    return turns


async def json_answer(session: Any, url: str, model: str) -> dict[str, Any]:
    """Step 5: an answer constrained to `SCHEMA`."""
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "place", "strict": True, "schema": SCHEMA},
    }
    body = ask(model, "Where is the Eiffel Tower? Answer in JSON.", 96)
    reply = await chat(session, url, {**body, "response_format": fmt})
    choice = reply["choices"][0]
    return {
        "text": choice["message"]["content"],
        "finish_reason": choice["finish_reason"],
    }


async def drive(
    url: str, model: str, gguf: Path | None = None, name: str = ""
) -> dict[str, Any]:
    """Steps 1-5 against the gateway at `url`, and 6 with `gguf`."""
    import aiohttp

    headers = {"Authorization": f"Bearer {API_KEY}"}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        entry = await ready(session, url, model)
        report = {"model": entry, **await streams(session, url, model)}
        # Every stream ended or was dropped: none may still hold a slot.
        report["running_after"] = (await listed(session, url))[model]["running"]
        report["chat"] = await chat_turns(session, url, model)
        report["json_schema"] = await json_answer(session, url, model)
        if gguf is not None:
            try:
                report["import"] = await import_beside(session, url, model, gguf, name)
            except (CheckFailed, aiohttp.ClientError, TimeoutError) as exc:
                # steps 1-5 stand; the import's failure is the report's
                report["import"] = {"file": str(gguf), "error": str(exc) or repr(exc)}
        return report


def wrong_graph(home: Path, model: str, precision: str, entry: dict) -> list[str]:
    """What is wrong with the graph that served `model` (its `/v1/models` entry
    says which), in words."""
    served = f"{entry.get('precision')} ({entry.get('quantization') or '?'})"
    if entry.get("precision") == precision:
        return []
    manifest = ModelStore(home).get(model)
    if manifest is None or precision not in manifest.fused_graphs:
        return [
            f"served {served}: {model} has no {precision} graph (`tiger-prepare "
            f"--precision {precision}` makes the embedded model's)"
        ]
    return [f"served {served}, not {precision}"]


def check(
    home: Path,
    model: str,
    device: str,
    against: str | None,
    workdir: Path,
    precision: str,
    gguf: Path | None = None,
) -> dict[str, Any]:
    name = f"serve-check-import-{uuid.uuid4().hex[:6]}"
    try:
        with served_on(home, model, device, workdir, precision) as url:
            report = asyncio.run(drive(url, model, gguf, name))
    finally:  # the imported model (or what a cut-off import left), once stopped
        if gguf is not None:
            ModelStore(home).remove(name)
    report["device"], report["precision"] = device, precision
    served = report["model"]
    report["graph"] = f"{served.get('precision')}, {served.get('quantization')}"
    report["failed"] = verdicts(report, device)
    report["failed"] += wrong_graph(home, model, precision, served)
    if gguf is not None:
        report["failed"] += import_verdicts(report, device)
    if against:
        try:
            with served_on(home, model, against, workdir, precision) as url:
                other = asyncio.run(drive(url, model))
        except RuntimeError as exc:  # CheckFailed too: the device's results stand
            report["failed"].append(f"on {against}: {exc}")
            return report
        report["against_cpu"] = agreement(answers(report), answers(other))
        failed = verdicts(other, against)
        failed += wrong_graph(home, model, precision, other["model"])
        report["failed"] += [f"on {against}: {f}" for f in failed]
    return report


def import_verdicts(report: dict[str, Any], device: str) -> list[str]:
    """What failed in step 6, in words."""
    done, model = report["import"], report["model"]
    if "error" in done:
        return [f"the import of {done['file']}: {done['error']}"]
    failed = []
    if done["provider"] != model.get("provider"):
        failed.append(
            f"the imported model runs on {done['provider']!r}, the model on "
            f"{model.get('provider')!r} ({device})"
        )
    name = Path(done["file"]).name
    if name in (model.get("source") or "") and not done["same_answer"]:
        failed.append(
            f"{name}, imported, answers {done['answer']!r}, unlike {model['id']}, "
            "prepared from it"
        )
    return failed


def add_import_gguf(parser: argparse.ArgumentParser, when: str = "then") -> None:
    """`--import-gguf [FILE]`: step 6 (gpu-check passes it on), the file checked
    as the arguments are read."""
    parser.add_argument(
        "--import-gguf",
        nargs="?",
        const="embedded",
        type=_gguf_file,
        metavar="FILE",
        help=f"{when} the server on the device imports FILE (the embedded model's "
        "own GGUF if none is named) and serves it beside the model (step 6)",
    )


def _gguf_file(value: str) -> Path:
    if value == "embedded":
        from ..models.embedded import find_gguf

        try:
            return find_gguf()
        except RuntimeError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not Path(value).is_file():
        raise argparse.ArgumentTypeError(f"{value} is not a file")
    return Path(value).resolve()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--home", type=Path, default=default_home())
    parser.add_argument("--model", default=DEFAULT_MODEL_ID)
    parser.add_argument("--against", choices=["cpu"], default=None)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument(
        "--precision",
        default="fp16",
        choices=PRECISIONS,
        help="the graph both servers serve (int4 and int8: their fp16-activation "
        "graphs, as on CUDA, on CPU too, so that the same graph is compared)",
    )
    add_import_gguf(parser)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # The graph both servers serve: int4 and int8 as on CUDA, on CPU too; on CUDA
    # what the server refuses (fp32) is refused here.
    precision = ON_CUDA.get(args.precision, args.precision)
    if args.device == "cuda":
        try:
            precision = on_cuda(args.precision)
        except ValueError as exc:
            parser.error(str(exc))
    with tempfile.TemporaryDirectory(prefix="tiger-serve-check-") as workdir:
        try:
            report = check(
                args.home,
                args.model,
                args.device,
                args.against,
                Path(workdir),
                precision,
                args.import_gguf,
            )
            said = markdown(report)
        except RuntimeError as exc:  # CheckFailed too, or a server that did not start
            report = {"device": args.device, "failed": [str(exc)]}
            said = f"# serve-check\n\n- failed: {exc}\n"
        finally:
            for log in Path(workdir).glob("*/*.log"):  # serve-server-cuda.log, ...
                name = f"serve-{log.stem}-{log.parent.name}.log"
                (args.out / name).write_bytes(log.read_bytes())
    (args.out / "serve.json").write_text(json.dumps(report, indent=2))
    (args.out / "serve.md").write_text(said)
    print(said)
    if report["failed"]:
        raise SystemExit("serve-check failed: " + "; ".join(report["failed"]))
    return report


if __name__ == "__main__":
    main()
