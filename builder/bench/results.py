"""Helpers over benchmark result rows (the dicts in a report's `results`), shared by the tables,
charts and the Markdown report; importing them loads no engine runtime."""

from __future__ import annotations

from builder.bench.stats import ratio

# Known precisions from widest to narrowest; any other name the manifest has sorts after them, by name.
PRECISION_ORDER = ("fp32", "fp16", "int8", "int4")
RATIO_BASES = ("fp16", "fp32")  # every other precision is compared with these


def precision_rank(precision: str) -> tuple[int, str]:
    return (
        PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER),
        precision,
    )


def ordered(precisions) -> list[str]:
    return sorted(precisions, key=precision_rank)


def case_key(row: dict) -> tuple:
    """What identifies a measured case across precisions."""
    return (row["component"], row["phase"], row["batch"], row["seq"], row.get("context", 0))


def ratio_names(precisions) -> list[str]:
    """'int8/fp16', 'int8/fp32', … for each precision other than the bases, narrowest last."""
    return [f"{p}/{base}" for p in ordered(precisions) if p not in RATIO_BASES for base in RATIO_BASES]


def latency_ratios(results: list[dict]) -> list[dict]:
    """p50 ratios of each precision to fp16 and to fp32 per case (below 1: faster than the base)."""
    cases: dict[tuple, dict[str, float]] = {}
    for row in results:
        cases.setdefault(case_key(row), {})[row["precision"]] = row["p50_ms"]
    out = []
    for (component, phase, batch, seq, context), p50 in cases.items():
        values = {name: ratio(*(p50.get(p) for p in name.split("/"))) for name in ratio_names(p50)}
        if any(v is not None for v in values.values()):
            rounded = {k: None if v is None else round(v, 4) for k, v in values.items()}
            out.append({"component": component, "phase": phase, "batch": batch, "seq": seq, "context": context,
                        **rounded})  # fmt: skip
    return out


def used_ratio_names(report: dict) -> list[str]:
    """The ratio columns that have a value somewhere, in precision order."""
    names = {k for r in report["ratios"] for k, v in r.items() if "/" in k and v is not None}
    return [n for n in ratio_names({n.split("/")[0] for n in names}) if n in names]
