"""The server's configuration from its flags and TIGER_* variables."""

from __future__ import annotations

import pytest

from tiger_grpc.config import Device
from tiger_grpc.server.main import parse_config


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("TIGER_HOME", str(tmp_path))
    monkeypatch.setenv("TIGER_API_KEY", "k")
    monkeypatch.delenv("TIGER_PREFIX_CACHE", raising=False)
    monkeypatch.delenv("TIGER_PRELOAD", raising=False)
    return monkeypatch


def test_the_prefix_cache_is_on_unless_turned_off(env) -> None:
    config, _ = parse_config(["--device", "cpu"])
    assert config.engine.prefix_cache and config.engine.device is Device.CPU
    assert not parse_config(["--no-prefix-cache"])[0].engine.prefix_cache
    env.setenv("TIGER_PREFIX_CACHE", "0")
    assert not parse_config([])[0].engine.prefix_cache
    env.setenv("TIGER_PREFIX_CACHE", "1")
    assert parse_config([])[0].engine.prefix_cache


def test_models_to_preload_come_from_flags_or_the_environment(env) -> None:
    assert parse_config([])[0].preload == ()
    assert parse_config(["--preload", "a", "--preload", "b"])[0].preload == ("a", "b")
    env.setenv("TIGER_PRELOAD", "a, b,")
    assert parse_config([])[0].preload == ("a", "b")


def test_a_bad_cuda_attention_setting_stops_the_server_at_start(env, capsys) -> None:
    assert parse_config([])[0].engine.cuda_attention == "flash"
    env.setenv("TIGER_CUDA_ATTENTION", "ort")
    assert parse_config([])[0].engine.cuda_attention == "ort"
    env.setenv("TIGER_CUDA_ATTENTION", "cudnn")
    with pytest.raises(SystemExit):
        parse_config(["--device", "cpu"])
    assert "TIGER_CUDA_ATTENTION must be one of flash, ort" in capsys.readouterr().err
