"""`tiger`: generate, chat, train and list models, over gRPC or the HTTP gateway.

    tiger generate "Why is the sky blue?" [--model ID] [--no-stream]
    tiger chat                                   # interactive, multi-turn
    tiger train examples.jsonl --model ID --output NEW_ID [--epochs 3 ...]
    tiger import /path/to/Meta-Llama-3.1-8B-Instruct --id llama-3.1-8b
    tiger models
    tiger keys add NAME --scopes generate[,train,import] [--max-concurrent N ...]

`--grpc host:port` (default, TIGER_GRPC_TARGET or localhost:50051) or `--http URL`
(the gateway); the key comes from `--api-key` or TIGER_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from ..api.errors import TigerError
from ..api.events import Delta, Imported, Info, Progress, Stop, Trained
from ..api.params import METHODS, Hyperparameters
from . import keycli
from .http import HttpClient
from .rpc import DEFAULT_MODEL, AsyncTigerClient


def _progress_bar(p: Progress, width: int = 30) -> str:
    done = int(width * p.step / max(p.total_steps, 1))
    eta = p.eta_ms / 1000
    return (
        f"\r[{'#' * done}{'.' * (width - done)}] step {p.step}/{p.total_steps} "
        f"epoch {p.epoch:.2f} loss {p.loss:.4f} {p.tokens_per_second:.0f} tok/s "
        f"ETA {int(eta // 60)}:{int(eta % 60):02d}"
    )


async def _print_reply(
    backend: Any, messages: Any, args: argparse.Namespace, out: TextIO
) -> str:
    parts: list[str] = []
    async for chunk in backend.generate(
        messages,
        model=args.model,
        system=args.system,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
    ):
        if isinstance(chunk, Info):
            print(f"[{chunk.message}]", file=sys.stderr)
        elif isinstance(chunk, Delta):
            parts.append(chunk.text)
            if args.stream:
                out.write(chunk.text)
                out.flush()
        elif isinstance(chunk, Stop):
            if not args.stream:
                out.write("".join(parts))
            out.write("\n")
            if args.verbose:
                print(
                    f"[{chunk.stop_reason}, {chunk.usage.output_tokens} tokens, "
                    f"{chunk.usage.duration_ms} ms]",
                    file=sys.stderr,
                )
    return "".join(parts)


async def _models(backend: Any, args: argparse.Namespace) -> None:
    for m in await backend.models():
        state = "loaded" if m.loaded else "not loaded"
        graph = f"{m.precision} ({m.quantization})" if m.quantization else m.precision
        print(f"{m.id}\t{state}\t{m.provider}\t{graph}\tcontext {m.context_length}")


async def _generate(backend: Any, args: argparse.Namespace) -> None:
    await _print_reply(backend, args.prompt, args, sys.stdout)


async def _chat(backend: Any, args: argparse.Namespace) -> None:
    history: list[dict[str, str]] = []
    print(f"chatting with {args.model}; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        sys.stdout.write(f"{args.model}> ")
        reply = await _print_reply(backend, history, args, sys.stdout)
        history.append({"role": "assistant", "content": reply})


async def _import(backend: Any, args: argparse.Namespace) -> None:
    if args.http:
        raise TigerError("`tiger import` talks to the gRPC server: drop --http")
    path = str(Path(args.path).resolve())
    async for event in backend.import_model(path, args.id):
        if isinstance(event, Info):
            print(event.message, file=sys.stderr)
        elif isinstance(event, Imported):
            print(f"imported {event.model} in {event.duration_ms / 1000:.1f} s")


async def _train(backend: Any, args: argparse.Namespace) -> None:
    examples = [
        json.loads(line)
        for line in Path(args.examples).read_text().splitlines()
        if line.strip()
    ]
    hyper = {name: getattr(args, name) for name in HYPERPARAMETERS}
    async for event in backend.train(args.model, args.output, examples, **hyper):
        if isinstance(event, Info):
            merging = event.message.startswith("Merging")
            print(f"\n{event.message}" if merging else event.message, file=sys.stderr)
        elif isinstance(event, Progress):
            sys.stderr.write(_progress_bar(event))
            sys.stderr.flush()
        elif isinstance(event, Trained):
            print(
                f"trained {event.model}: {event.steps} steps, {event.train_tokens} "
                f"tokens, {event.duration_ms / 1000:.1f} s"
            )


COMMANDS = {
    "models": _models,
    "generate": _generate,
    "chat": _chat,
    "import": _import,
    "train": _train,
}
HYPERPARAMETERS = tuple(Hyperparameters.model_fields)


async def _run(args: argparse.Namespace) -> int:
    backend: Any = (
        HttpClient(args.http, args.api_key)
        if args.http
        else AsyncTigerClient(args.grpc, api_key=args.api_key)
    )
    try:
        await COMMANDS[args.command](backend, args)
        return 0
    except TigerError as exc:
        print(f"\nerror: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await backend.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tiger",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--grpc", default=None, help="gRPC server (default localhost:50051)"
    )
    where.add_argument(
        "--http",
        default=os.environ.get("TIGER_URL"),
        help="HTTP gateway URL, e.g. http://localhost:45678 (TIGER_URL)",
    )
    p.add_argument("--api-key", default=os.environ.get("TIGER_API_KEY"))
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the models")

    def generation(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--model", default=DEFAULT_MODEL)
        cmd.add_argument("--system", default=None, help="a system message")
        cmd.add_argument("--max-tokens", type=int, default=None)
        cmd.add_argument("--temperature", type=float, default=None)
        cmd.add_argument("--seed", type=int, default=None)
        cmd.add_argument(
            "--no-stream",
            dest="stream",
            action="store_false",
            help="print the answer when it is complete",
        )
        cmd.add_argument(
            "-v", "--verbose", action="store_true", help="print stop reason and usage"
        )

    generation(gen := sub.add_parser("generate", help="answer one prompt"))
    gen.add_argument("prompt")
    generation(sub.add_parser("chat", help="an interactive multi-turn chat"))
    importing = sub.add_parser(
        "import", help="serve a local Hugging Face Llama checkpoint or GGUF file"
    )
    importing.add_argument("path", help="a checkpoint directory or .gguf file")
    importing.add_argument("--id", required=True, help="the id to serve it under")
    train = sub.add_parser(
        "train", help="fine-tune a model on a JSONL file of conversations"
    )
    train.add_argument("examples", help='JSONL: one {"messages": [...]} per line')
    train.add_argument("--model", default=DEFAULT_MODEL, help="the base model")
    train.add_argument("--output", required=True, help="the new model's id")
    train.add_argument("--method", choices=METHODS, default=None)
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lora-rank", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    keycli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "keys":  # the key file, here: no server involved
        raise SystemExit(keycli.run(args))
    try:
        raise SystemExit(asyncio.run(_run(args)))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
