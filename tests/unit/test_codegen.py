"""The committed gRPC code is what `make proto` generates from proto/."""

from pathlib import Path

from tiger_grpc.tools.codegen import generate

COMMITTED = Path(__file__).resolve().parents[2] / "tiger_grpc" / "pb"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    fresh = {p.relative_to(tmp_path): p.read_text() for p in generate(tmp_path / "pb")}
    fresh = {p.relative_to("pb"): text for p, text in fresh.items()}
    committed = {
        p.relative_to(COMMITTED): p.read_text()
        for p in COMMITTED.rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi")
    }
    assert sorted(committed) == sorted(fresh), "run `make proto` and commit the result"
    for path, text in fresh.items():
        assert committed[path] == text, (
            f"{path} is stale: run `make proto` and commit it"
        )


def test_generation_is_reproducible(tmp_path: Path) -> None:
    first = [p.read_bytes() for p in generate(tmp_path / "a")]
    second = [p.read_bytes() for p in generate(tmp_path / "b")]
    assert first == second
