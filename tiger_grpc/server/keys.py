"""Who may call what, and how much: the keys in force (`KeyRing`: the key file,
reloaded when it changes or on SIGHUP, and `TIGER_API_KEY` with every scope) and
each key's limits (`Limits`), counted by this server process.

A key is looked up by its SHA-256 (a table of the known digests) and the match
confirmed in constant time; the key itself is never kept. Limits are checked
before a call starts; a running stream is never cut. Requests per minute and
tokens per minute (prompt + generated, charged when a call ends) are sliding
windows of the last 60 seconds.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..api.keys import (
    MAX_KEY_CHARS,
    RESERVED,
    SCOPES,
    Key,
    KeyFileError,
    digest,
    read_keys,
)

log = logging.getLogger(__name__)

WINDOW_S = 60.0
WATCH_INTERVAL_S = 1.0


class KeyRing:
    """The keys in force; `reload` swaps in a key file's new contents, or keeps the
    last good ones when it does not parse."""

    def __init__(self, api_key: str | None, keys_file: Path | None) -> None:
        self.keys_file = keys_file
        self._admin = (
            None
            if api_key is None
            else Key(RESERVED, digest(api_key), frozenset(SCOPES))
        )
        self._keys: list[Key] = []
        self._seen: tuple[float, int, int] | None = None
        if keys_file is not None:
            self._seen = _stamp(keys_file)  # before reading: a change after it shows
            self._keys = read_keys(keys_file)  # at start, a bad file is fatal
        self._index()

    def find(self, presented: str) -> Key | None:
        """The key of that digest: found by it (one table lookup, however many
        keys), the match confirmed in constant time."""
        if not presented or len(presented) > MAX_KEY_CHARS:
            return None
        wanted = digest(presented)
        key = self._by_digest.get(wanted)
        if key is None or not hmac.compare_digest(wanted, key.sha256):
            return None
        return key

    def _index(self) -> None:
        keys = [*self._keys, *([self._admin] if self._admin else [])]
        self._by_digest = {key.sha256: key for key in keys}

    def reload(self, force: bool = False) -> bool:
        """Reads the key file again when it changed (or `force`); True when new
        keys are in force."""
        path = self.keys_file
        if path is None:
            return False
        stamp = _stamp(path)
        if not force and stamp == self._seen:
            return False
        self._seen = stamp
        try:
            keys = read_keys(path)
        except KeyFileError as exc:
            log.error("key file %s refused, the last good one stays: %s", path, exc)
            return False
        self._keys = keys
        self._index()
        log.info("key file %s loaded: %d keys", path, len(keys))
        return True

    async def watch(self) -> None:
        """Reloads the key file whenever it changes (checked every second)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                self.reload()
            except Exception:  # never let the watcher die
                log.exception("key file check failed")


def _stamp(path: Path) -> tuple[float, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime, stat.st_size, stat.st_ino)


class OverLimit(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


@dataclass
class _Usage:
    requests: collections.deque[float] = field(default_factory=collections.deque)
    tokens: collections.deque[tuple[float, int]] = field(
        default_factory=collections.deque
    )
    running: int = 0


class Limits:
    """Each key's use, by name (a key file reload keeps the counts)."""

    def __init__(self) -> None:
        self._usage: dict[str, _Usage] = collections.defaultdict(_Usage)

    def admit(self, key: Key, now: float | None = None) -> None:
        """Counts a call in, or raises `OverLimit` (nothing counted)."""
        if not key.limited:
            return
        now = time.monotonic() if now is None else now
        use = self._usage[key.name]
        _expire(use, now)
        if key.max_concurrent is not None and use.running >= key.max_concurrent:
            raise OverLimit(
                f"key {key.name!r} has {use.running} streams running, its "
                f"max_concurrent; retry when one ends",
                1,
            )
        limit = key.requests_per_minute
        if limit is not None and len(use.requests) >= limit:
            wait = use.requests[0] + WINDOW_S - now
            raise OverLimit(
                f"key {key.name!r} is over its requests_per_minute ({limit})",
                max(1, math.ceil(wait)),
            )
        limit = key.tokens_per_minute
        spent = sum(n for _, n in use.tokens)
        if limit is not None and spent >= limit:
            wait = _tokens_wait(use.tokens, spent - limit + 1, now)
            raise OverLimit(
                f"key {key.name!r} is over its tokens_per_minute ({limit}): "
                f"{spent} in the last minute",
                wait,
            )
        use.requests.append(now)
        use.running += 1

    def release(self, key: Key, tokens: int, now: float | None = None) -> None:
        """A call admitted by `admit` ended, having used `tokens`."""
        if not key.limited:
            return
        use = self._usage[key.name]
        use.running -= 1
        if tokens:
            use.tokens.append((time.monotonic() if now is None else now, tokens))

    def running(self, name: str) -> int:
        return self._usage[name].running if name in self._usage else 0


def _expire(use: _Usage, now: float) -> None:
    while use.requests and use.requests[0] <= now - WINDOW_S:
        use.requests.popleft()
    while use.tokens and use.tokens[0][0] <= now - WINDOW_S:
        use.tokens.popleft()


def _tokens_wait(
    spent: collections.deque[tuple[float, int]], over: int, now: float
) -> int:
    """Seconds until `over` tokens have left the window."""
    freed = 0
    for at, tokens in spent:
        freed += tokens
        if freed >= over:
            return max(1, math.ceil(at + WINDOW_S - now))
    return int(WINDOW_S)
