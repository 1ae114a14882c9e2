"""TLS between the gateway and the servers, and several backends behind one gateway."""

from __future__ import annotations

import datetime
import ipaddress
import signal
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import (
    API_KEY,
    TINY_MODEL_ID,
    process_env,
    stack,
    start_gateway,
    start_server,
)
from tiger_grpc.pb.tiger.v1 import tiger_pb2 as pb
from tiger_grpc.pb.tiger.v1 import tiger_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SHORT = {
    "model": TINY_MODEL_ID,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
}


def _write(path: Path, key, cert) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tiger test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca", ca_key, ca)
    for name, sans in (
        (
            "server",
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ],
        ),
        ("client", [x509.DNSName("tiger-gateway")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(directory / name, key, cert)
    return directory


async def generate(url: str) -> int:
    async with aiohttp.ClientSession(headers=HEADERS) as s:
        async with s.post(f"{url}/v1/generate_response", json=SHORT) as reply:
            await reply.read()
            return reply.status


async def test_mutual_tls_between_gateway_and_server(
    store_home, tiny_model, tmp_path
) -> None:
    pki = make_pki(tmp_path)
    server_tls = (
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--tls-client-ca",
        str(pki / "ca.pem"),
    )
    gateway_tls = (
        "--grpc-tls-ca",
        str(pki / "ca.pem"),
        "--grpc-tls-cert",
        str(pki / "client.pem"),
        "--grpc-tls-key",
        str(pki / "client.key"),
    )
    with stack(store_home, tmp_path, server_tls, gateway_tls) as (server, gateway):
        assert await generate(f"http://127.0.0.1:{gateway.port}") == 200
        request = pb.ListModelsRequest()
        auth = (("authorization", f"Bearer {API_KEY}"),)
        # Plaintext is refused, and so is TLS without a client certificate.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.TigerStub(channel).ListModels(
                    request, metadata=auth, timeout=5
                )
        no_cert = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        async with grpc.aio.secure_channel(
            f"localhost:{server.port}", no_cert
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.TigerStub(channel).ListModels(
                    request, metadata=auth, timeout=5
                )


async def test_two_backends_one_dies_requests_still_succeed(
    store_home, tiny_model, tmp_path
):
    env = process_env(store_home)
    servers = [
        start_server(tmp_path, f"server{i}", env, "--no-prepare") for i in range(2)
    ]
    targets = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    gateway = start_gateway(tmp_path, "rr-gateway", env, targets)
    url = f"http://127.0.0.1:{gateway.port}"
    try:
        assert [await generate(url) for _ in range(6)] == [200] * 6
        for server in servers:  # round_robin: both took a share
            assert "Generate model=tiny-llama code=OK" in server.log.read_text()
        servers[0].popen.send_signal(signal.SIGKILL)
        servers[0].popen.wait()
        assert [await generate(url) for _ in range(10)] == [200] * 10
    finally:
        gateway.stop()
        for server in servers:
            server.stop()
