"""The gateway in-process: aiohttp's test client over fake gRPC stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import init
from gateway.backend import Backend
from gateway.config import GatewayConfig
from tests.unit.fakes import KEY, FakeHealth, FakeTiger


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[TestClient, FakeTiger, FakeHealth]]:
    tiger, health = FakeTiger(), FakeHealth()
    app = init(GatewayConfig(api_key=KEY), Backend(tiger, health))
    async with TestClient(TestServer(app)) as client:
        yield client, tiger, health
