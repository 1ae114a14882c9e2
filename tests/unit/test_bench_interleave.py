"""The 1B bench's engines take turns run by run, so that a drift in the machine's
speed falls on all of them alike."""

from tiger_grpc.tools import bench_scale
from tiger_grpc.tools.bench_scale import RUNS, STREAMS, _interleaved


def test_engines_take_turns_and_keep_their_own_figures() -> None:
    calls: list[tuple[str, int]] = []

    def engine(name: str, speed: float):
        def run(rows: int) -> float:
            calls.append((name, rows))
            return speed * rows

        return run

    tiger, peer = _interleaved([engine("tiger", 10.0), engine("llama", 7.0)])

    assert tiger == {"one": [10.0] * RUNS, "eight": [10.0 * STREAMS] * RUNS}
    assert peer == {"one": [7.0] * RUNS, "eight": [7.0 * STREAMS] * RUNS}
    # One stream first, then eight; within each, pairs whose order turns.
    assert [rows for _, rows in calls] == [1] * 2 * RUNS + [STREAMS] * 2 * RUNS
    firsts = [calls[i][0] for i in range(0, len(calls), 2)]
    seconds = [calls[i][0] for i in range(1, len(calls), 2)]
    assert all(a != b for a, b in zip(firsts, seconds, strict=True))
    assert firsts[:2] == ["tiger", "llama"]


def test_tiger_alone_is_run_as_often(monkeypatch) -> None:
    runs: list[int] = []

    class Runs:
        def __init__(self, graph) -> None:
            pass

        def run(self, rows: int) -> float:
            runs.append(rows)
            return 1.0

    monkeypatch.setattr(bench_scale, "_TigerRuns", Runs)
    speeds = bench_scale.tiger_speed(None)  # type: ignore[arg-type]
    assert runs == [1] * RUNS + [STREAMS] * RUNS
    assert speeds == {"one": [1.0] * RUNS, "eight": [1.0] * RUNS}
