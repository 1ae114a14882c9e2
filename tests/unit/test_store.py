"""The model store never shows a half-written model."""

from pathlib import Path

import pytest

from tiger_grpc.models.store import ModelManifest, ModelStore


def manifest(model_id: str) -> ModelManifest:
    return ModelManifest(
        id=model_id, source="test", context_length=16, eos_token_ids=[2]
    )


def test_a_failed_preparation_leaves_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), store.staging("m") as scratch:
        (scratch / "big-file").write_bytes(b"x" * 100)
        raise RuntimeError("boom")
    assert store.list() == []
    assert list(store.models_dir.iterdir()) == []


def test_a_killed_preparation_is_invisible_and_cleaned_up(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    leftover = store.models_dir / ".staging-m-deadbeef"  # what a SIGKILL leaves
    leftover.mkdir()
    manifest("m").write(leftover)
    assert store.get("m") is None and store.list() == []
    with store.lock("m"), store.staging("m") as scratch:
        manifest("m").write(scratch)
    assert not leftover.exists()
    assert [m.id for m in store.list()] == ["m"]


def test_ids_are_case_insensitive(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with store.staging("Llama-3.1-8B") as scratch:
        manifest("llama-3.1-8b").write(scratch)
    assert store.get("LLAMA-3.1-8b") == store.get("llama-3.1-8b") is not None


def test_staging_without_a_manifest_fails(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError, match="no model.json"), store.staging("m"):
        pass
    assert store.get("m") is None


def test_a_removed_model_leaves_nothing_behind(tmp_path: Path) -> None:
    """Its directory, an unfinished preparation of it and its lock file go; the
    other models stay."""
    store = ModelStore(tmp_path)
    for model_id in ("gone", "kept"):
        with store.lock(model_id), store.staging(model_id) as scratch:
            manifest(model_id).write(scratch)
    (store.models_dir / ".staging-gone-deadbeef").mkdir()  # a cut-off attempt
    store.remove("GONE")
    assert [m.id for m in store.list()] == ["kept"]
    assert sorted(p.name for p in store.models_dir.iterdir()) == [".kept.lock", "kept"]
