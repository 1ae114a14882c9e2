"""`tiger keys add NAME --scopes generate,train [--requests-per-minute N]
[--tokens-per-minute N] [--max-concurrent N] [--file PATH]`: a new random key,
printed once, its SHA-256 appended to the key file (TIGER_KEYS_FILE; created with
0600 permissions). The server picks it up within a second (or on SIGHUP)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..api.keys import SCOPES, KeyFileError, add_key


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="manage the API key file (TIGER_KEYS_FILE)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    add = actions.add_parser("add", help="make a key, print it once, add it")
    add.add_argument("name", help="shown in logs and metrics, never the key")
    add.add_argument(
        "--scopes", required=True, help=f"comma-separated: {', '.join(SCOPES)}"
    )
    add.add_argument("--requests-per-minute", type=int, default=None)
    add.add_argument("--tokens-per-minute", type=int, default=None)
    add.add_argument("--max-concurrent", type=int, default=None)
    add.add_argument(
        "--file",
        type=Path,
        default=os.environ.get("TIGER_KEYS_FILE"),
        help="the key file (default TIGER_KEYS_FILE)",
    )


def run(args: argparse.Namespace) -> int:
    if args.file is None:
        print("error: no key file: pass --file or set TIGER_KEYS_FILE", file=sys.stderr)
        return 2
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    try:
        key = add_key(
            Path(args.file),
            args.name,
            scopes,
            requests_per_minute=args.requests_per_minute,
            tokens_per_minute=args.tokens_per_minute,
            max_concurrent=args.max_concurrent,
        )
    except (KeyFileError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(key)
    print(
        f"added key {args.name!r} ({', '.join(scopes)}) to {args.file}; the key is "
        "shown this once",
        file=sys.stderr,
    )
    return 0
