"""`make bench`'s report: the target ratios, the Markdown table and the chart."""

from __future__ import annotations

from pathlib import Path


def targets(rows: list[dict[str, float]]) -> list[tuple[str, float, str, bool]]:
    def get(backend: str, c: int = 1) -> dict[str, float]:
        return next(
            r
            for r in rows
            if r["backend"].startswith(backend) and r["concurrency"] == c
        )

    http, engine = get("Tiger HTTP"), get("Tiger engine")
    optimum = get("optimum")
    agg8 = get("Tiger HTTP", 8)["aggregate_tok_s"] / http["aggregate_tok_s"]
    return [
        (
            "HTTP 1-stream decode / optimum generate",
            http["decode_tok_s"] / optimum["decode_tok_s"],
            ">= 4.5",
            http["decode_tok_s"] / optimum["decode_tok_s"] >= 4.5,
        ),
        (
            "HTTP 1-stream decode / engine in-process",
            http["decode_tok_s"] / engine["decode_tok_s"],
            ">= 0.95",
            http["decode_tok_s"] / engine["decode_tok_s"] >= 0.95,
        ),
        ("HTTP aggregate at 8 streams / 1 stream", agg8, ">= 3", agg8 >= 3),
        (
            "HTTP TTFT p50 - in-process TTFT p50 (ms)",
            http["ttft_p50_ms"] - engine["ttft_p50_ms"],
            "<= 20",
            http["ttft_p50_ms"] - engine["ttft_p50_ms"] <= 20,
        ),
    ]


def markdown(rows: list[dict[str, float]], meta: dict[str, object]) -> str:
    lines = [
        f"Tiger benchmark: {meta['model']} ({meta['precision']} fused graph), greedy, "
        f"max_tokens {meta['max_tokens']}, {meta['cpus']} CPUs, {meta['date']}",
        "",
        "| backend | streams | decode tok/s per stream | TTFT p50 ms | TTFT p95 ms "
        "| aggregate tok/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['concurrency']} | {r['decode_tok_s']:.1f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p95_ms']:.0f} | "
            f"{r['aggregate_tok_s']:.1f} |"
        )
    lines += ["", "| target | measured | wanted | met |", "|---|---:|---|---|"]
    for name, value, wanted, met in targets(rows):
        lines.append(f"| {name} | {value:.2f} | {wanted} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        points = [
            (r["concurrency"], r["aggregate_tok_s"])
            for r in rows
            if r["backend"] == backend
        ]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=backend)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_xticks([1, 4, 8, 16])
    ax.set_title("Tiger: aggregate decode throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
