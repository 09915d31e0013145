"""Helpers over benchmark result rows (the dicts in a report's `results`), shared by the tables,
charts and the Markdown report; importing them loads no engine runtime."""

from __future__ import annotations

from runtime.bench.stats import ratio

PRECISION_ORDER = ("fp32", "fp16", "int8")
RATIOS = (("int8", "fp16"), ("int8", "fp32"))


def precision_rank(precision: str) -> tuple[int, str]:
    return (
        PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER),
        precision,
    )


def ordered(precisions) -> list[str]:
    return sorted(precisions, key=precision_rank)


def latency_ratios(results: list[dict]) -> list[dict]:
    """p50 ratios int8/fp16 and int8/fp32 of each case (below 1: int8 is faster)."""
    cases: dict[tuple, dict[str, float]] = {}
    for row in results:
        key = (row["component"], row["phase"], row["batch"], row["seq"])
        cases.setdefault(key, {})[row["precision"]] = row["p50_ms"]
    out = []
    for (component, phase, batch, seq), p50 in cases.items():
        values = {f"{a}/{b}": ratio(p50.get(a), p50.get(b)) for a, b in RATIOS}
        if any(v is not None for v in values.values()):
            rounded = {k: None if v is None else round(v, 4) for k, v in values.items()}
            out.append({"component": component, "phase": phase, "batch": batch, "seq": seq, **rounded})
    return out
