"""The reports: `make bench`'s target ratios, Markdown table and chart, and `make
bench-gpu`'s table against the bandwidth bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, bool]]:
    def get(backend: str, c: int = 1) -> dict[str, Any]:
        return next(
            r
            for r in rows
            if r["backend"].startswith(backend) and r["concurrency"] == c
        )

    http, engine, sse = get("Tiger HTTP"), get("Tiger engine"), get("Tiger OpenAI")
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
        (
            "OpenAI SSE 1-stream decode / NDJSON",
            sse["decode_tok_s"] / http["decode_tok_s"],
            ">= 0.95",
            sse["decode_tok_s"] / http["decode_tok_s"] >= 0.95,
        ),
        (
            "OpenAI SSE TTFT p50 - NDJSON TTFT p50 (ms)",
            sse["ttft_p50_ms"] - http["ttft_p50_ms"],
            "<= 10",
            sse["ttft_p50_ms"] - http["ttft_p50_ms"] <= 10,
        ),
    ]


def peer_targets(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, bool]]:
    """Tiger against llama.cpp's server on the same GGUF, both over OpenAI's
    chat completions (only when llama.cpp ran)."""

    def get(backend: str, c: int) -> dict[str, Any] | None:
        found = (r for r in rows if r["backend"].startswith(backend))
        return next((r for r in found if r["concurrency"] == c), None)

    found = []
    for c, field, wanted in ((1, "decode_tok_s", 1.3), (8, "aggregate_tok_s", 1.0)):
        tiger, llama = get("Tiger OpenAI", c), get("llama.cpp", c)
        if tiger is None or llama is None:
            continue
        ratio = tiger[field] / llama[field]
        what = "1-stream decode" if c == 1 else "aggregate at 8 streams"
        name = f"{what}: Tiger / llama.cpp server (OpenAI SSE)"
        found.append((name, ratio, f">= {wanted}", ratio >= wanted))
    return found


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
    found = [*targets(rows), *peer_targets(rows)]
    return "\n".join([*lines, *target_lines(found)]) + "\n"


def target_lines(
    found: list[tuple[str, float, str, bool]], digits: int = 2
) -> list[str]:
    """The markdown table of targets: measured, wanted, met."""
    lines = ["", "| target | measured | wanted | met |", "|---|---:|---|---|"]
    for name, value, wanted, met in found:
        shown = f"{value:.{digits}f}"
        lines.append(f"| {name} | {shown} | {wanted} | {'yes' if met else 'NO'} |")
    return lines


def chat_targets(rows: list[dict[str, Any]]) -> list[tuple[str, float, str, bool]]:
    """The chat scenario's targets: turns after the first with the cache against
    without it, and against llama.cpp's server when it ran."""
    by = {r["server"].split(",")[-1].strip(): r for r in rows}
    on, off = by["prefix cache"], by["TIGER_PREFIX_CACHE=0"]
    speedup = off["later_p50_ms"] / on["later_p50_ms"]
    name = "chat TTFT p50, turns 2-6: cache off / on"
    found = [(name, speedup, ">= 20", speedup >= 20)]
    llama = next((r for r in rows if r["server"].startswith("llama")), None)
    if llama is not None:
        compared = (("later_p50_ms", "chat turns 2-6"), ("short_p50_ms", "short"))
        for key, what in compared:
            ratio = on[key] / llama[key]
            found.append(
                (f"{what} TTFT p50: Tiger / llama.cpp", ratio, "<= 1", ratio <= 1)
            )
    return found


def chat_markdown(rows: list[dict[str, Any]]) -> str:
    turns = len(rows[0]["turns_ms"])
    head = " | ".join(f"turn {i + 1}" for i in range(turns))
    lines = [
        f"Chat scenario: a ~2,000-token system prompt, {turns} turns, greedy, "
        "streaming (OpenAI chat completions); time to first token in ms, median "
        "over the conversations; short: single questions of ~36 tokens",
        "",
        f"| server | {head} | turns 2+ p50 | turns 2+ p95 | short p50 | short p95 |",
        "|---|" + "---:|" * (turns + 4),
    ]
    for r in rows:
        cells = " | ".join(f"{t:.0f}" for t in r["turns_ms"])
        lines.append(
            f"| {r['server']} | {cells} | {r['later_p50_ms']:.0f} | "
            f"{r['later_p95_ms']:.0f} | {r['short_p50_ms']:.0f} | "
            f"{r['short_p95_ms']:.0f} |"
        )
    return "\n".join([*lines, *target_lines(chat_targets(rows))]) + "\n"


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


def gpu_markdown(rows: list[Any], meta: dict[str, Any], parity: dict | None) -> str:
    """`rows`: `bench_gpu.Row`s."""
    lines = [
        f"Tiger GPU benchmark ({meta['gpu'] or 'no GPU'}, peak "
        f"{meta['bandwidth_tbs'] or '?'} TB/s), greedy, {meta['decode_tokens']} tokens "
        f"after a {meta['prompt_tokens']}-token prompt, engine in-process"
        + ("" if meta.get("cuda_graphs", True) else ", CUDA graphs off"),
        "",
        "| model | provider | weights | streams | prefill ms | ms/step "
        "| tok/s per stream | aggregate tok/s | batch-1 bound | of bound |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bound = f"{r.bound_tokens_per_s:.0f}" if r.bound_tokens_per_s else "n/a"
        share = (
            f"{r.tokens_per_s_per_stream / r.bound_tokens_per_s:.0%}"
            if r.bound_tokens_per_s and r.streams == 1
            else ""
        )
        lines.append(
            f"| {r.model} | {r.provider} | {r.precision} {r.weights_gb} GB "
            f"| {r.streams} | {r.prefill_ms} | {r.step_ms} "
            f"| {r.tokens_per_s_per_stream} | {r.aggregate_tokens_per_s} "
            f"| {bound} | {share} |"
        )
    lines.append("")
    for model in dict.fromkeys(r.model for r in rows):
        mine = {r.streams: r for r in rows if r.model == model}
        one = mine.get(1)
        if one and one.bound_tokens_per_s:
            share = one.tokens_per_s_per_stream / one.bound_tokens_per_s
            lines.append(
                f"- {model}: batch-1 decode {share:.0%} of the bandwidth bound "
                f"(target >= 70%: {'met' if share >= 0.7 else 'NOT met'})"
            )
        top = mine.get(max(mine))
        if one and top and top is not one:
            ratio = top.aggregate_tokens_per_s / one.aggregate_tokens_per_s
            lines.append(
                f"- {model}: aggregate at {top.streams} streams {ratio:.1f}x batch 1"
                + (
                    f" (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})"
                    if top.streams == 32
                    else ""
                )
            )
    if parity:
        lines += [
            "",
            f"Greedy parity, embedded model, {parity['precision']} on "
            f"{parity['provider']} vs fp32 optimum export on CPU: "
            f"{parity['same_leading_tokens']}/{parity['tokens']} leading tokens equal",
            f"- {parity['provider']}: {parity['text']!r}",
            f"- CPU fp32: {parity['cpu_fp32_text']!r}",
        ]
    return "\n".join(lines) + "\n"
