"""serve-check's judgement and report: what failed, the greedy answers of two
devices compared word for word, and the report in Markdown."""

from __future__ import annotations

import json
from typing import Any

REQUIRED = ("city", "country")  # the JSON schema's keys
SLACK = 8  # tokens at the end of an earlier turn's prompt a later one may not share


def verdicts(report: dict[str, Any], device: str) -> list[str]:
    """What failed, in words (empty: all passed)."""
    failed = []
    provider = report["model"].get("provider", "")
    if device == "cuda" and provider != "CUDAExecutionProvider":
        failed.append(f"asked for CUDA, the model is on {provider!r}")
    if not report["dropped"].get("dropped"):
        failed.append("the stream to drop ended before three deltas")
    if report["running_after"]:
        failed.append(
            f"{report['running_after']} sequences still run after the streams"
        )
    later = report["chat"][1:]
    for turn, before in zip(later, report["chat"], strict=False):
        # The template may render the end of a turn anew (a stripped answer).
        reused = before["prompt_tokens"] - SLACK <= turn["cached_tokens"]
        if not reused or turn["cached_tokens"] >= turn["prompt_tokens"]:
            failed.append(f"a later turn reused too little of the chat: {turn}")
    schema = report["json_schema"]
    try:
        value = json.loads(schema["text"])
    except ValueError:
        value = None
    fits = (
        isinstance(value, dict)
        and set(value) == set(REQUIRED)
        and all(isinstance(v, str) for v in value.values())
    )
    if schema["finish_reason"] != "stop" or not fits:
        failed.append(f"the JSON answer does not fit the schema: {schema}")
    return failed


def answers(report: dict[str, Any]) -> list[str]:
    """The greedy answers, in order, for comparing two devices."""
    return [
        report["seed_stream"]["text"],
        report["one_stream"]["text"],
        *report["eight_streams"]["texts"],
        *(turn["text"] for turn in report["chat"]),
        report["json_schema"]["text"],
    ]


def agreement(device: list[str], cpu: list[str]) -> dict[str, Any]:
    """How many answers are the same word for word, and where the others part."""
    parted = []
    for i, (a, b) in enumerate(zip(device, cpu, strict=True)):
        if a != b:
            pairs = enumerate(zip(a, b, strict=False))
            same = next((k for k, (x, y) in pairs if x != y), None)
            same = min(len(a), len(b)) if same is None else same
            parted.append({"answer": i, "same_chars": same, "of": max(len(a), len(b))})
    identical = len(device) - len(parted)
    return {"answers": len(device), "identical": identical, "parted": parted}


def markdown(report: dict[str, Any]) -> str:
    seed = report["seed_stream"]
    one = report["one_stream"]
    many = report["eight_streams"]
    lines = [
        "# serve-check",
        "",
        f"- model: {report['model']['id']} on {report['model'].get('provider')} "
        f"(asked: {report['device']}, {report['precision']}: "
        f"{report.get('graph')})",
        f"- seed guide's stream: {seed['usage']['output_tokens']} tokens, time to "
        f"first token {seed['ttft_ms']} ms, {seed['tokens_per_s']} tok/s: "
        f"{seed['text']!r}",
        f"- one stream of {one['usage']['output_tokens']} tokens: time to first "
        f"token {one['ttft_ms']} ms, {one['tokens_per_s']} tok/s",
        f"- dropped after three deltas: {report['dropped']['text']!r}",
        f"- eight streams at once: {many['output_tokens']} tokens, "
        f"{many['aggregate_tokens_per_s']} tok/s together, time to first token "
        f"{min(many['ttft_ms'])}-{max(many['ttft_ms'])} ms",
        "- chat turns (prompt tokens, cached): "
        + ", ".join(
            f"{t['prompt_tokens']}/{t['cached_tokens']}" for t in report["chat"]
        ),
        f"- JSON schema: {report['json_schema']['text']}",
    ]
    done = report.get("import", {})
    if "error" in done:
        lines.append(f"- the import of {done['file']} failed: {done['error']}")
    elif done:
        before, after = done["memory_in_use_gb"]
        memory = (
            f"; GPU memory in use {before} GB before, {after} GB after"
            if after is not None
            else ""
        )
        lines.append(
            f"- {done['file']} imported by the server on {report['device']} in "
            f"{done['seconds']} s, served "
            f"on {done['provider']}: {done['answer']!r} (the same as the model's: "
            f"{'yes' if done['same_answer'] else 'no'}){memory}; "
            + " / ".join(done["said"])
        )
    if "against_cpu" in report:
        a = report["against_cpu"]
        lines.append(
            f"- against the same server on CPU: {a['identical']} of {a['answers']} "
            f"greedy answers identical; parted: {json.dumps(a['parted'])}"
        )
    lines.append(f"- failed: {'; '.join(report['failed']) or 'nothing'}")
    return "\n".join([*lines, ""])
