"""The key file, the key ring and the limits, without a server: parsing (every
error names its line), lookups, reloads that keep the last good file, and the
sliding windows."""

from __future__ import annotations

import os
import stat

import pytest

from tiger_grpc.api.keys import KeyFileError, add_key, digest, entry, parse_keys
from tiger_grpc.server.keys import KeyRing, Limits, OverLimit

GOOD = (
    entry("billing", "k1", ["generate"], max_concurrent=2)
    + "\n"
    + entry("ops", "k2", ["generate", "train", "import"], requests_per_minute=3)
)


def test_a_good_file_parses() -> None:
    billing, ops = parse_keys(GOOD)
    assert billing.name == "billing" and billing.scopes == {"generate"}
    assert billing.sha256 == digest("k1") and billing.max_concurrent == 2
    assert ops.requests_per_minute == 3 and ops.tokens_per_minute is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[[key]\nname = 1", "not TOML"),
        (GOOD.replace('scopes = ["generate"]', 'scopes = ["admin"]'), "line 1"),
        (GOOD.replace('"ops"', '"billing"'), "line 7: the name 'billing' is used"),
        (GOOD.replace("requests_per_minute = 3", "requests_per_minute = 0"), "line 7"),
        (GOOD.replace("max_concurrent", "max_concurrency"), "unknown field"),
        (GOOD.replace(digest("k1").hex(), "abc"), "64 hex digits"),
        ("[server]\nport = 1\n", "only [[key]]"),
    ],
)
def test_a_bad_file_names_the_line_and_reason(text, needle) -> None:
    with pytest.raises(KeyFileError, match=needle.replace("[", r"\[")):
        parse_keys(text)


def test_keys_add_writes_a_0600_file_and_never_the_key(tmp_path) -> None:
    path = tmp_path / "keys.toml"
    key = add_key(path, "svc", ["generate"], tokens_per_minute=1000)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert key not in path.read_text() and digest(key).hex() in path.read_text()
    second = add_key(path, "svc2", ["train"])
    assert [k.name for k in parse_keys(path.read_text())] == ["svc", "svc2"]
    with pytest.raises(KeyFileError, match="used twice"):
        add_key(path, "svc", ["train"])
    ring = KeyRing(None, path)
    assert ring.find(key).name == "svc" and ring.find(second).name == "svc2"
    for wrong in ("", "x" * 10_000, key[:-1], key + " ", "clé", "Bearer " + key):
        assert ring.find(wrong) is None


def test_a_reload_swaps_keys_and_keeps_the_last_good_file(tmp_path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(entry("a", "ka", ["generate"]))
    ring = KeyRing("admin", path)
    assert ring.find("ka").name == "a" and ring.find("admin").scopes == {
        "generate",
        "train",
        "import",
    }
    path.write_text(entry("b", "kb", ["generate"]))
    assert ring.reload(force=True)
    assert ring.find("ka") is None and ring.find("kb").name == "b"
    path.write_text("[[key]]\nname = \n")
    assert not ring.reload(force=True)
    assert ring.find("kb").name == "b"  # the last good file stays in force


def test_limits_count_per_key_and_say_when_to_retry() -> None:
    (_, ops) = parse_keys(GOOD)
    limits = Limits()
    for _ in range(3):
        limits.admit(ops, now=100.0)
        limits.release(ops, 0, now=100.0)
    with pytest.raises(OverLimit) as over:
        limits.admit(ops, now=110.0)
    assert over.value.retry_after == 50 and "requests_per_minute" in over.value.message
    limits.admit(ops, now=160.5)  # the window slid past the first three

    billing = parse_keys(GOOD)[0]
    limits.admit(billing)
    limits.admit(billing)
    with pytest.raises(OverLimit, match="max_concurrent"):
        limits.admit(billing)
    limits.release(billing, 10)
    limits.admit(billing)
    assert limits.running("billing") == 2


def test_tokens_per_minute_charges_at_the_end() -> None:
    (key,) = parse_keys(entry("t", "kt", ["generate"], tokens_per_minute=100))
    limits = Limits()
    limits.admit(key, now=0.0)
    limits.admit(key, now=0.0)  # nothing spent yet: both run
    limits.release(key, 80, now=1.0)
    limits.release(key, 80, now=2.0)
    with pytest.raises(OverLimit, match="tokens_per_minute") as over:
        limits.admit(key, now=3.0)
    assert over.value.retry_after == 58  # the first 80 leave the window at 61 s
    limits.admit(key, now=62.0)


def test_a_reserved_name_or_a_shared_digest_is_refused() -> None:
    with pytest.raises(KeyFileError, match="the environment key's"):
        parse_keys(entry("TIGER_API_KEY", "k9", ["generate"]))
    twice = entry("a", "same", ["generate"]) + entry("b", "same", ["train"])
    with pytest.raises(KeyFileError, match="same sha256 as 'a'"):
        parse_keys(twice)
