"""Keys with scopes and limits, tried as an attacker would, on a real server and
gateway of their own: wrong, empty, overlong and non-ASCII keys; scope escalation
on every route and RPC; limits under concurrency; imports out of the import roots;
the key file edited (and broken) while streams run; and no key in any log, metric
or error message."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from pathlib import Path

import aiohttp
import grpc
import pytest

from tests.helpers import API_KEY, TINY_MODEL_ID, run_cli, stack
from tiger_grpc.api.keys import add_key, entry
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
METRICS_KEY = "metrics-key-7"
ASK = [{"role": "user", "content": "Hello there, how are you?"}]
# Every HTTP route that reaches a model, and the scope it needs.
ROUTES = [
    ("POST", "/v1/generate_response", "generate"),
    ("POST", "/v1/chat/completions", "generate"),
    ("POST", "/v1/completions", "generate"),
    ("GET", "/v1/models", "generate"),
    ("POST", "/v1/train", "train"),
    ("POST", "/v1/models/import", "import"),
]


@pytest.fixture(scope="module")
def keyed(store_home: Path, tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("keyed")
    roots = home / "imports"
    (roots / "empty").mkdir(parents=True)
    outside = home / "outside"
    outside.mkdir()
    (roots / "escape").symlink_to(outside)
    path = home / "keys.toml"
    keys = {
        "gen": add_key(path, "gen", ["generate"], max_concurrent=2),
        "trainer": add_key(path, "trainer", ["train"]),
        "importer": add_key(path, "importer", ["import"]),
        "paced": add_key(path, "paced", ["generate"], requests_per_minute=3),
        "thrifty": add_key(path, "thrifty", ["generate"], tokens_per_minute=40),
        "metered": add_key(path, "metered", ["generate"], tokens_per_minute=40),
    }
    env = {
        "TIGER_KEYS_FILE": str(path),
        "TIGER_IMPORT_ROOTS": str(roots),
        "TIGER_METRICS_KEY": METRICS_KEY,
        "TIGER_API_KEY": None,  # the file's keys only
    }
    with stack(store_home, home, env=env) as (server, gateway):
        yield {
            "server": server,
            "gateway": gateway,
            "url": f"http://127.0.0.1:{gateway.port}",
            "keys": keys,
            "file": path,
            "roots": roots,
        }


def body(route: str, max_tokens: int = 2) -> dict:
    if route == "/v1/train":
        example = {"messages": [*ASK, {"role": "assistant", "content": "Fine."}]}
        return {"model": "no-such-model", "output_model": "x1", "examples": [example]}
    if route == "/v1/models/import":
        return {"path": "/nonexistent-root/ckpt", "id": "x2"}
    if route == "/v1/completions":
        return {"model": TINY_MODEL_ID, "prompt": "Hi", "max_tokens": max_tokens}
    return {"model": TINY_MODEL_ID, "messages": ASK, "max_tokens": max_tokens}


async def call(url: str, method: str, route: str, headers: dict, **kw) -> tuple:
    async with aiohttp.ClientSession() as s:
        json_body = body(route, **kw) if method == "POST" else None
        async with s.request(method, url + route, json=json_body, headers=headers) as r:
            return r.status, await r.text(), dict(r.headers)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def test_wrong_keys_are_401_on_every_route_and_rpc(keyed) -> None:
    overlong = "k" * 20_000
    attempts = [{}, bearer("wrong"), bearer(""), bearer(overlong), bearer("clé-ü")]
    attempts += [{"Authorization": keyed["keys"]["gen"]}]  # no "Bearer "
    for method, route, _ in ROUTES:
        for headers in attempts:
            status, text, _ = await call(keyed["url"], method, route, headers)
            assert status == 401, (route, headers.keys(), text)
            assert overlong not in text
    # Past the gateway's 64 KiB header limit aiohttp refuses the request itself
    # (400), and its log line leaves the bytes out.
    status, _, _ = await call(keyed["url"], "GET", "/v1/models", bearer("k" * 70_000))
    assert status == 400
    assert "k" * 50 not in keyed["gateway"].log.read_text()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed['server'].port}") as ch:
        stub = pb_grpc.TigerStub(ch)
        for metadata in (
            (),
            (("authorization", "Bearer wrong"),),
            # (gRPC refuses metadata past ~8 KiB itself: RESOURCE_EXHAUSTED)
            (("authorization", "Bearer " + overlong[:4000]),),
        ):
            for rpc, request in rpcs():
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await drain(getattr(stub, rpc)(request, metadata=metadata))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def rpcs() -> list[tuple[str, object]]:
    return [
        (
            "Generate",
            pb.GenerateRequest(model=TINY_MODEL_ID, prompt="Hi", max_tokens=1),
        ),
        ("ListModels", pb.ListModelsRequest()),
        ("Train", pb.TrainRequest(model="no-such-model", output_model="x3")),
        ("ImportModel", pb.ImportModelRequest(path="/nonexistent-root/c", id="x4")),
    ]


async def drain(call) -> list:
    if hasattr(call, "__aiter__"):
        return [c async for c in call]
    return [await call]


SCOPE_OF_RPC = {
    "Generate": "generate",
    "ListModels": "generate",
    "Train": "train",
    "ImportModel": "import",
}


async def test_no_key_reaches_past_its_scopes(keyed) -> None:
    """Each key on every route and RPC: its own scope passes the check (a 200, or
    the handler's own error), any other is 403 naming the scope."""
    holders = {"generate": "gen", "train": "trainer", "import": "importer"}
    for method, route, scope in ROUTES:
        for name in ("gen", "trainer", "importer"):
            status, text, _ = await call(
                keyed["url"], method, route, bearer(keyed["keys"][name])
            )
            if holders[scope] == name:  # past the key check (the handler's answer)
                assert status not in (401, 429) and "scope" not in text, (route, text)
            else:
                assert status == 403, (route, name, text)
                assert f"`{scope}` scope" in text and keyed["keys"][name] not in text
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed['server'].port}") as ch:
        stub = pb_grpc.TigerStub(ch)
        for name in ("gen", "trainer", "importer"):
            metadata = (("authorization", f"Bearer {keyed['keys'][name]}"),)
            for rpc, request in rpcs():
                if holders[SCOPE_OF_RPC[rpc]] == name:
                    try:
                        await drain(getattr(stub, rpc)(request, metadata=metadata))
                    except grpc.aio.AioRpcError as exc:
                        assert "scope" not in (exc.details() or ""), rpc
                    continue
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await drain(getattr(stub, rpc)(request, metadata=metadata))
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert SCOPE_OF_RPC[rpc] in info.value.details()


async def test_no_request_slips_past_max_concurrent(keyed) -> None:
    headers = bearer(keyed["keys"]["gen"])
    route = "/v1/generate_response"
    results = await asyncio.gather(
        *(call(keyed["url"], "POST", route, headers, max_tokens=300) for _ in range(8))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200] + [429] * 6, statuses
    refused = next(r for r in results if r[0] == 429)
    assert refused[2]["Retry-After"] == "1" and "max_concurrent" in refused[1]
    # Over gRPC too, counted with the HTTP calls (per key, on this server).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed['server'].port}") as ch:
        stub = pb_grpc.TigerStub(ch)
        metadata = (("authorization", headers["Authorization"]),)
        request = pb.GenerateRequest(model=TINY_MODEL_ID, prompt="Hi", max_tokens=300)
        outcomes = await asyncio.gather(
            *(drain(stub.Generate(request, metadata=metadata)) for _ in range(5)),
            return_exceptions=True,
        )
    codes = [
        o.code() if isinstance(o, grpc.aio.AioRpcError) else "OK" for o in outcomes
    ]
    assert (
        codes.count("OK") == 2 and codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 3
    )


async def test_requests_and_tokens_per_minute(keyed) -> None:
    paced = bearer(keyed["keys"]["paced"])
    route = "/v1/generate_response"
    for _ in range(3):
        status, _, _ = await call(keyed["url"], "POST", route, paced)
        assert status == 200
    status, text, headers = await call(keyed["url"], "POST", route, paced)
    assert status == 429 and "requests_per_minute (3)" in text
    assert 50 <= int(headers["Retry-After"]) <= 60
    async with grpc.aio.insecure_channel(f"127.0.0.1:{keyed['server'].port}") as ch:
        stub = pb_grpc.TigerStub(ch)
        metadata = (("authorization", paced["Authorization"]),)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await drain(stub.ListModels(pb.ListModelsRequest(), metadata=metadata))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(info.value.trailing_metadata())["retry-after"].isdigit()

    thrifty = bearer(keyed["keys"]["thrifty"])
    status, _, _ = await call(keyed["url"], "POST", route, thrifty, max_tokens=30)
    assert status == 200  # nothing spent before it: it runs, and spends over 40
    status, text, _ = await call(keyed["url"], "POST", route, thrifty)
    assert status == 429 and "tokens_per_minute (40)" in text


async def test_imports_cannot_leave_the_import_roots_and_are_audited(keyed) -> None:
    headers = bearer(keyed["keys"]["importer"])
    roots = keyed["roots"]
    attacks = {
        "/etc": 403,
        "/proc/self/environ": 403,
        str(roots / "escape"): 403,
        str(roots / "empty" / ".." / ".." / "outside"): 400,
        str(roots / "empty"): 404,  # inside: read, and found to be no checkpoint
    }
    async with aiohttp.ClientSession(headers=headers) as s:
        for path, expected in attacks.items():
            async with s.post(
                keyed["url"] + "/v1/models/import", json={"path": path, "id": "atk"}
            ) as r:
                assert r.status == expected, (path, await r.text())
    trainer = bearer(keyed["keys"]["trainer"])
    status, _, _ = await call(keyed["url"], "POST", "/v1/train", trainer)
    assert status == 404  # an unknown base model
    log = keyed["server"].log.read_text()
    assert '"audit": "ImportModel", "key": "importer", "path": "/etc"' in log
    assert '"outcome": "PERMISSION_DENIED"' in log
    assert '"audit": "Train", "key": "trainer", "model": "no-such-model"' in log


async def test_the_key_file_changes_under_running_streams(keyed) -> None:
    path: Path = keyed["file"]
    good = path.read_text()
    old = keyed["keys"]["gen"]
    stream = asyncio.create_task(
        call(keyed["url"], "POST", "/v1/generate_response", bearer(old), max_tokens=400)
    )
    await asyncio.sleep(0.3)
    tables = [t for t in good.split("[[key]]") if t.strip()]
    kept = [t for t in tables if 'name = "gen"' not in t]
    path.write_text(
        "".join("[[key]]" + t for t in kept)
        + entry("newcomer", "fresh-key-1", ["generate"])
    )
    await asyncio.sleep(1.6)  # the server looks every second
    status, _, _ = await call(keyed["url"], "GET", "/v1/models", bearer(old))
    assert status == 401
    status, _, _ = await call(keyed["url"], "GET", "/v1/models", bearer("fresh-key-1"))
    assert status == 200
    path.write_text(path.read_text() + "\n[[key]]\nname = oops\n")  # broken
    await asyncio.sleep(1.6)
    status, _, _ = await call(keyed["url"], "GET", "/v1/models", bearer("fresh-key-1"))
    assert status == 200  # the last good file stays in force
    assert (await stream)[0] == 200  # the running stream was never cut
    log = keyed["server"].log.read_text()
    assert "refused, the last good one stays: not TOML: Invalid value (at line" in log
    # SIGHUP reloads at once (no waiting for the check).
    path.write_text(good)
    keyed["server"].popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        status, _, _ = await call(keyed["url"], "GET", "/v1/models", bearer(old))
        if status == 200:
            break
    assert status == 200 and keyed["server"].popen.poll() is None


async def test_metrics_behind_a_key_and_no_key_leaks_anywhere(keyed) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(keyed["url"] + "/metrics") as r:
            assert r.status == 401
        async with s.get(keyed["url"] + "/metrics", headers=bearer(METRICS_KEY)) as r:
            gateway_metrics = await r.text()
            assert r.status == 200
        server_metrics_url = f"http://127.0.0.1:{keyed['server'].metrics_port}/metrics"
        async with s.get(server_metrics_url) as r:
            server_metrics = await r.text()
        for route in ("/healthz", "/readyz", "/"):
            async with s.get(keyed["url"] + route) as r:
                assert r.status == 200, route
    assert (
        'tiger_key_requests_total{code="PERMISSION_DENIED",key="gen",method="Train"}'
        in server_metrics
    )
    texts = [
        keyed["server"].log.read_text(),
        keyed["gateway"].log.read_text(),
        gateway_metrics,
        server_metrics,
    ]
    for key in [*keyed["keys"].values(), "fresh-key-1", API_KEY, METRICS_KEY]:
        assert not any(key in text for text in texts), key


async def test_training_requests_have_explicit_caps(keyed) -> None:
    headers = bearer(keyed["keys"]["trainer"])
    long = {"role": "user", "content": "word " * 3000}
    example = {"messages": [long, {"role": "assistant", "content": "ok"}]}
    request = {"model": TINY_MODEL_ID, "output_model": "capped", "examples": [example]}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(keyed["url"] + "/v1/train", json=request) as r:
            assert r.status == 400
            assert "`examples[0]` is" in (await r.json())["message"]
        huge = {**request, "examples": [example] * 400}  # over the body limit
        data = io.BytesIO(json.dumps(huge).encode())
        kind = {"Content-Type": "application/json"}
        async with s.post(keyed["url"] + "/v1/train", data=data, headers=kind) as r:
            assert r.status == 413


def test_tiger_keys_add_prints_the_key_once(keyed, tmp_path: Path) -> None:
    path = tmp_path / "cli-keys.toml"
    out = run_cli(
        "keys",
        "add",
        "cli-svc",
        "--scopes",
        "generate,train",
        "--max-concurrent",
        "4",
        "--file",
        str(path),
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("tgr_") and key not in path.read_text()
    assert "shown this once" in out.stderr
    again = run_cli(
        "keys", "add", "cli-svc", "--scopes", "generate", "--file", str(path)
    )
    assert again.returncode == 2 and "used twice" in again.stderr
    bad = run_cli("keys", "add", "x", "--scopes", "admin", "--file", str(path))
    assert bad.returncode == 2 and "`scopes` must be" in bad.stderr


async def test_a_stream_left_early_is_still_charged_its_tokens(keyed) -> None:
    """Tokens are charged however a call ends: a client that reads a little and
    leaves has spent its prompt and what was generated."""
    headers = bearer(keyed["keys"]["metered"])
    body = {"model": TINY_MODEL_ID, "messages": ASK, "max_tokens": 300, "stream": True}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(keyed["url"] + "/v1/generate_response", json=body) as r:
            assert r.status == 200
            for _ in range(15):  # some of the answer, then away
                await r.content.readline()
        # The server learns of it when the gateway cancels the call: wait for the
        # charge to show in its metrics, then ask again.
        metrics = f"http://127.0.0.1:{keyed['server'].metrics_port}/metrics"
        charged = 'tiger_key_tokens_total{key="metered"}'
        for _ in range(100):
            async with s.get(metrics) as page:
                if charged in await page.text():
                    break
            await asyncio.sleep(0.1)
        status, text, _ = await call(
            keyed["url"], "POST", "/v1/generate_response", headers
        )
    assert status == 429 and "tokens_per_minute (40)" in text
