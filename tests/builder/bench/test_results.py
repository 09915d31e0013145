"""Result rows of any precision the manifest lists: ordering, ratios, tables and charts."""

from __future__ import annotations

from builder.bench.plots import plot_engines
from builder.bench.report import engines_section
from builder.bench.results import latency_ratios, ordered, used_ratio_names
from builder.bench.tables import console, latency_table


def _row(precision: str, p50: float, phase: str = "decode", context: int = 64) -> dict:
    return {"component": "text_decoder", "precision": precision, "phase": phase, "batch": 1, "seq": 1,
            "context": context, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50, "tokens_per_s": 1000 / p50,
            "peak_rss_mb": None}  # fmt: skip


def test_known_precisions_sort_widest_first_and_others_after_them_by_name():
    assert ordered(["w3x", "int4", "int8", "fp16", "fp32", "a2"]) == [
        "fp32",
        "fp16",
        "int8",
        "int4",
        "a2",
        "w3x",
    ]


def test_every_precision_gets_ratios_to_fp16_and_fp32_per_context():
    results = [
        _row(p, ms, context=c) for c in (64, 512) for p, ms in (("fp32", 10.0), ("int8", 5.0), ("int4", 2.0))
    ]
    ratios = {r["context"]: r for r in latency_ratios(results)}
    assert ratios.keys() == {64, 512}
    assert ratios[64]["int8/fp32"] == 0.5 and ratios[64]["int4/fp32"] == 0.2
    assert ratios[64]["int4/fp16"] is None and ratios[64]["int8/fp16"] is None
    report = {"results": results, "ratios": latency_ratios(results), "engines": [], "accuracy": [],
              "config": {"model": "m", "warmup": 1, "repeats": 1, "threads": 0, "contexts": [64, 512]}}  # fmt: skip
    assert used_ratio_names(report) == ["int8/fp32", "int4/fp32"]
    out = console()
    with out.capture() as captured:
        out.print(latency_table(report))
    text = captured.get()
    assert "int4 tok/s" in text and "int4/fp32" in text and text.index("int8 ms") < text.index("int4 ms")
    assert "| text_decoder | decode | 1 | 1 | 512 | int4 | 2.00 |" in "\n".join(
        engines_section(report, None, None)
    )


def test_decode_chart_has_a_line_per_precision_and_context(tmp_path):
    results = [_row(p, ms, context=c) for c in (64, 512) for p, ms in (("fp32", 10.0), ("int4", 2.0))]
    plot_engines({"results": results, "config": {"model": "m"}}, tmp_path / "e.png")
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"
