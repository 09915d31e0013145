"""Rich tables of the benchmark reports (the dicts `bench engines` / `bench serve` write as JSON)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from builder.bench.results import case_key, ordered, used_ratio_names
from builder.bench.serve import comparison_table


def console() -> Console:
    # Piped (make, CI): a fixed width instead of rich's 80 columns, which would wrap the tables.
    return Console() if sys.stdout.isatty() else Console(width=160, no_color=True)


def _fmt(value, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def latency_table(report: dict) -> Table:
    precisions = ordered({r["precision"] for r in report["results"]})
    ratios = {case_key(r): r for r in report["ratios"]}
    table = Table(
        title="Latency p50 (ms) and tokens/s; ratios of p50 (below 1: faster than the base). "
        "S: new tokens per sequence; ctx: tokens cached before them"
    )
    for name in ("component", "phase", "B", "S", "ctx"):
        table.add_column(name, justify="left" if name in ("component", "phase") else "right")
    for p in precisions:
        table.add_column(f"{p} ms", justify="right")
        table.add_column(f"{p} tok/s", justify="right")
    names = used_ratio_names(report)
    for name in names:
        table.add_column(name, justify="right")
    cases: dict[tuple, dict[str, dict]] = {}
    for row in report["results"]:
        cases.setdefault(case_key(row), {})[row["precision"]] = row
    for key, by_precision in cases.items():
        cells = [key[0], key[1], str(key[2]), str(key[3]), str(key[4]) if key[1] == "decode" else "—"]
        for p in precisions:
            row = by_precision.get(p)
            cells += [_fmt(row and row["p50_ms"]), _fmt(row and row["tokens_per_s"], ".1f")]
        cells += [_fmt(ratios.get(key, {}).get(name), ".3f") for name in names]
        table.add_row(*cells)
    return table


def engines_table(report: dict) -> Table:
    accuracy = {(a["component"], a["precision"]): a for a in report["accuracy"]}
    table = Table(title="Engines: size, peak memory, accuracy vs fp32")
    for name in ("component", "precision", "file MB", "peak RSS MB", "cosine", "top1", "ppl", "ppl fp32"):
        table.add_column(name, justify="left" if name in ("component", "precision") else "right")
    for entry in report["engines"]:
        acc = accuracy.get((entry["component"], entry["precision"]), {})
        table.add_row(
            entry["component"],
            entry["precision"],
            _fmt(entry["file_mb"], ".1f"),
            _fmt(entry.get("peak_rss_mb"), ".0f"),
            _fmt(acc.get("cosine"), ".5f"),
            _fmt(acc.get("top1"), ".4f"),
            _fmt(acc.get("perplexity"), ".3f"),
            _fmt(acc.get("perplexity_fp32"), ".3f"),
        )
    return table


def roofline_lines(report: dict) -> list[str]:
    roof = report.get("roofline")
    if not roof:
        return []
    lines = [
        f"Roofline (decode batch 1; bytes read per token = initializers read + KV at the context): "
        f"bandwidth {roof['bandwidth_gb_per_s']:.1f} GB/s"
    ]
    for r in roof["cases"]:
        lines.append(
            f"  {r['precision']:<6} ctx {r['context']:>5}: {r['weight_bytes'] / 1e6:.1f} MB weights + "
            f"{r['kv_bytes'] / 1e6:.2f} MB KV = {r['bytes_per_token'] / 1e6:.1f} MB per token → ceiling "
            f"{r['ceiling_tokens_per_s']:.1f} tok/s; measured {r['measured_tokens_per_s']:.1f} tok/s "
            f"= {r['fraction']:.0%} of the roofline"
        )
    return lines


def energy_table(report: dict) -> Table | None:
    """Decode CPU time and energy per generated token, per precision (None: no decode rows)."""
    rows = [r for r in report["results"] if r.get("cpu_ms_per_token") is not None]
    if not rows:
        return None
    precisions = ordered({r["precision"] for r in rows})
    table = Table(title="Decode cost per generated token: process CPU ms (all threads) and RAPL package mJ")
    for name in ("B", "ctx"):
        table.add_column(name, justify="right")
    for p in precisions:
        table.add_column(f"{p} CPU ms", justify="right")
        table.add_column(f"{p} mJ", justify="right")
    cases: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        cases.setdefault((row["batch"], row["context"]), {})[row["precision"]] = row
    for (batch, context), by_precision in cases.items():
        cells = [str(batch), str(context)]
        for p in precisions:
            row = by_precision.get(p)
            cells += [
                _fmt(row and row["cpu_ms_per_token"], ".3f"),
                _fmt(row and row["energy_mj_per_token"], ".1f"),
            ]
        table.add_row(*cells)
    return table


def print_engine_report(report: dict) -> None:
    out = console()
    if report["results"]:
        out.print(latency_table(report))
    energy = energy_table(report)
    if energy is not None:
        out.print(energy)
        note = (report.get("energy") or {}).get("note")
        if note:
            out.print(f"Energy per token not measured (—): {note}")
    out.print(engines_table(report))
    for line in roofline_lines(report):
        out.print(line)
    if report.get("interrupted"):
        out.print("(interrupted: partial results)")


def serve_table(report: dict) -> Table:
    table = Table(
        title=f"Serving {report.get('model', '')} at {report.get('url', '')} (ms; tokens/s of output)"
    )
    columns = ("conc", "req", "err", "req/s", "out tok/s", "TTFT p50", "p90", "p99", "TPOT p50", "p90",
               "p99", "ITL p50", "p99", "E2E p50", "p99")  # fmt: skip
    for name in columns:
        table.add_column(name, justify="right")
    for r in report["results"]:
        table.add_row(
            str(r["concurrency"]), str(r["requests"]), str(r["errors"]), _fmt(r["requests_per_s"]),
            _fmt(r["output_tokens_per_s"], ".1f"),
            *(_fmt(r[f"{m}_{p}_ms"], ".1f") for m, p in (("ttft", "p50"), ("ttft", "p90"), ("ttft", "p99"),
              ("tpot", "p50"), ("tpot", "p90"), ("tpot", "p99"), ("itl", "p50"), ("itl", "p99"),
              ("e2e", "p50"), ("e2e", "p99"))),
        )  # fmt: skip
    return table


def print_serve_report(report: dict) -> None:
    out = console()
    out.print(serve_table(report))
    if report.get("interrupted"):
        out.print("(interrupted: partial results)")


def print_serve_comparison(report: dict) -> None:
    """A compared report (`bench serve --replicas 1,2 --dynamo-workers 1,2`): each run's table,
    then the ratio table over the base runs."""
    out = console()
    for run in report["runs"]:
        out.print(serve_table({**report, "url": f"{run['url']} ({run['name']})", "results": run["results"]}))
    header, rows = comparison_table(report)
    table = Table(
        title="Each server over the base runs (tok/s: above 1 is more; TTFT p50: below 1 is sooner)"
    )
    for name in header:
        table.add_column(name, justify="left" if name == "server" else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    if report.get("interrupted"):
        out.print("(interrupted: partial results)")
