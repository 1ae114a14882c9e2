"""`tiger`: generate, chat, train and list models, over gRPC or the HTTP gateway.

    tiger generate "Why is the sky blue?" [--model ID] [--no-stream]
    tiger chat                                   # interactive, multi-turn
    tiger train examples.jsonl --model ID --output NEW_ID [--epochs 3 ...]
    tiger import /path/to/Meta-Llama-3.1-8B-Instruct --id llama-3.1-8b
    tiger models

`--grpc host:port` (default, TIGER_GRPC_TARGET or localhost:50051) or `--http URL`
(the gateway); the key comes from `--api-key` or TIGER_API_KEY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from .client import (
    DEFAULT_MODEL,
    AlreadyExistsError,
    AsyncTigerClient,
    AuthenticationError,
    Delta,
    Imported,
    Info,
    InvalidArgumentError,
    Model,
    NotFoundError,
    OverloadedError,
    Progress,
    Stop,
    StreamError,
    TigerError,
    Trained,
    UnavailableError,
    Usage,
)

HTTP_ERRORS = {
    400: InvalidArgumentError,
    401: AuthenticationError,
    404: NotFoundError,
    409: AlreadyExistsError,
    413: InvalidArgumentError,
    429: OverloadedError,
    503: UnavailableError,
}


class HttpBackend:
    """The same calls as `AsyncTigerClient`, through the HTTP gateway."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self._url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None)
        )

    async def close(self) -> None:
        await self._session.close()

    async def _stream(
        self, path: str, body: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._session.post(
                f"{self._url}{path}", json={**body, "stream": True}
            ) as r:
                if r.status != 200:
                    try:
                        message = (await r.json())["message"]
                    except (ValueError, KeyError, aiohttp.ContentTypeError):
                        message = await r.text()
                    raise HTTP_ERRORS.get(r.status, TigerError)(
                        f"HTTP {r.status}: {message}"
                    )
                async for line in r.content:
                    if line.strip():
                        chunk = json.loads(line)
                        if chunk["type"] == "error":
                            raise StreamError(chunk["message"])
                        yield chunk
        except aiohttp.ClientConnectionError as exc:
            raise UnavailableError(
                f"cannot reach the gateway at {self._url}: {exc}"
            ) from None

    async def generate(
        self,
        messages: Any,
        *,
        model: str = DEFAULT_MODEL,
        system: str | None = None,
        **params: Any,
    ) -> AsyncIterator[Any]:
        turns = (
            [{"role": "user", "content": messages}]
            if isinstance(messages, str)
            else messages
        )
        if system:
            turns = [{"role": "system", "content": system}, *turns]
        body = {
            "model": model,
            "messages": turns,
            **{k: v for k, v in params.items() if v is not None},
        }
        async for c in self._stream("/v1/generate_response", body):
            if c["type"] == "info":
                yield Info(c["message"])
            elif c["type"] == "delta":
                yield Delta(c["delta"])
            elif c["type"] == "stop":
                yield Stop(c["stop_reason"], Usage(**c["usage"]))

    async def train(
        self, model: str, output_model: str, examples: Sequence[Any], **hyper: Any
    ) -> AsyncIterator[Any]:
        body = {
            "model": model,
            "output_model": output_model,
            "examples": list(examples),
            "hyperparameters": {k: v for k, v in hyper.items() if v is not None},
        }
        async for c in self._stream("/v1/train", body):
            if c["type"] == "info":
                yield Info(c["message"])
            elif c["type"] == "progress":
                yield Progress(**{k: v for k, v in c.items() if k != "type"})
            elif c["type"] == "stop":
                yield Trained(c["model"], **c["usage"])

    async def models(self) -> list[Model]:
        async with self._session.get(f"{self._url}/v1/models") as r:
            body = await r.json()
            if r.status != 200:
                raise HTTP_ERRORS.get(r.status, TigerError)(
                    body.get("message", str(r.status))
                )
        return [
            Model(
                m["id"],
                m["loaded"],
                m["provider"],
                m["context_length"],
                m.get("source", ""),
                m.get("running", 0),
            )
            for m in body["models"]
        ]


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


async def _run(args: argparse.Namespace) -> int:
    backend: Any = (
        HttpBackend(args.http, args.api_key)
        if args.http
        else AsyncTigerClient(args.grpc, api_key=args.api_key)
    )
    try:
        if args.command == "models":
            for m in await backend.models():
                print(
                    f"{m.id}\t{'loaded' if m.loaded else 'not loaded'}\t{m.provider}\t"
                    f"context {m.context_length}"
                )
        elif args.command == "generate":
            await _print_reply(backend, args.prompt, args, sys.stdout)
        elif args.command == "chat":
            history: list[dict[str, str]] = []
            print(
                f"chatting with {args.model}; an empty line or Ctrl-D ends",
                file=sys.stderr,
            )
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
        elif args.command == "import":
            if args.http:
                raise TigerError("`tiger import` talks to the gRPC server: drop --http")
            path = str(Path(args.path).resolve())
            async for event in backend.import_model(path, args.id):
                if isinstance(event, Info):
                    print(event.message, file=sys.stderr)
                elif isinstance(event, Imported):
                    print(f"imported {event.model} in {event.duration_ms / 1000:.1f} s")
        elif args.command == "train":
            examples = [
                json.loads(line)
                for line in Path(args.examples).read_text().splitlines()
                if line.strip()
            ]
            async for event in backend.train(
                args.model,
                args.output,
                examples,
                method=args.method,
                epochs=args.epochs,
                max_steps=args.max_steps,
                learning_rate=args.learning_rate,
                batch_size=args.batch_size,
                lora_rank=args.lora_rank,
                seed=args.seed,
            ):
                if isinstance(event, Info):
                    print(
                        f"\n{event.message}"
                        if event.message.startswith("Merging")
                        else event.message,
                        file=sys.stderr,
                    )
                elif isinstance(event, Progress):
                    sys.stderr.write(_progress_bar(event))
                    sys.stderr.flush()
                elif isinstance(event, Trained):
                    print(
                        f"trained {event.model}: {event.steps} steps, {event.train_tokens} "
                        f"tokens, {event.duration_ms / 1000:.1f} s"
                    )
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
        "import", help="serve a local Hugging Face Llama checkpoint"
    )
    importing.add_argument(
        "path", help="the checkpoint directory (readable by the server)"
    )
    importing.add_argument("--id", required=True, help="the id to serve it under")
    train = sub.add_parser(
        "train", help="fine-tune a model on a JSONL file of conversations"
    )
    train.add_argument("examples", help='JSONL: one {"messages": [...]} per line')
    train.add_argument("--model", default=DEFAULT_MODEL, help="the base model")
    train.add_argument("--output", required=True, help="the new model's id")
    train.add_argument("--method", choices=("lora", "full"), default=None)
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--learning-rate", type=float, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lora-rank", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        raise SystemExit(asyncio.run(_run(args)))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
