"""A Markdown report of `bench engines` and `bench serve` JSON, linking their PNG charts."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from builder.bench.results import case_key, precision_rank, used_ratio_names
from builder.bench.serve import comparison_table


def _f(value, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows), ""]  # fmt: skip


def _image(out: Path, chart: Path | None, title: str) -> list[str]:
    if chart is None or not chart.exists():
        return []
    return [f"![{title}]({os.path.relpath(chart, out.parent)})", ""]


def engines_section(report: dict, out: Path, chart: Path | None) -> list[str]:
    cfg = report["config"]
    lines = [
        f"## Engines: {cfg.get('model') or cfg['engines_dir']}",
        "",
        f"Precisions interleaved in one process after {cfg['warmup']} warm-up call(s), {cfg['repeats']} timed "
        f"calls per case; threads {cfg['threads'] or 'all'}; decode of one token per sequence after "
        f"{', '.join(map(str, cfg['contexts']))} cached tokens (ctx). "
        "Ratios are of p50 latencies (below 1: faster than the base).",
        "",
    ]
    if report.get("interrupted"):
        lines += ["**Interrupted: partial results.**", ""]
    ratios = {case_key(r): r for r in report["ratios"]}
    names = used_ratio_names(report)
    rows = []
    for r in report["results"]:
        key = case_key(r)
        rows.append([r["component"], r["phase"], str(r["batch"]), str(r["seq"]),
                     str(key[4]) if r["phase"] == "decode" else "—", r["precision"],
                     _f(r["p50_ms"]), _f(r["p90_ms"]), _f(r["p99_ms"]), _f(r["tokens_per_s"], ".1f"),
                     _f(r["peak_rss_mb"], ".0f"), *(_f(ratios.get(key, {}).get(n), ".3f") for n in names)])  # fmt: skip
    header = ["component", "phase", "B", "S", "ctx", "precision", "p50 ms", "p90 ms", "p99 ms", "tok/s",
              "peak RSS MB", *names]  # fmt: skip
    lines += _table(header, rows)
    accuracy = {(a["component"], a["precision"]): a for a in report["accuracy"]}
    engine_rows = []
    for e in sorted(report["engines"], key=lambda e: (e["component"], precision_rank(e["precision"]))):
        a = accuracy.get((e["component"], e["precision"]), {})
        engine_rows.append([e["component"], e["precision"], e["backend"], _f(e["file_mb"], ".1f"),
                            _f(e.get("peak_rss_mb"), ".0f"), _f(a.get("cosine"), ".5f"), _f(a.get("top1"), ".4f"),
                            _f(a.get("perplexity"), ".3f"), _f(a.get("perplexity_fp32"), ".3f")])  # fmt: skip
    lines += ["### Size, memory and accuracy vs fp32", ""]
    lines += _table(["component", "precision", "backend", "file MB", "peak RSS MB", "cosine", "top1", "ppl",
                     "ppl fp32"], engine_rows)  # fmt: skip
    lines += ["Text: logits on held-out passages (cosine, top-1 agreement, perplexity). Encoders: cosine of "
              "embedding rows on the same inputs; top1 is not defined for embeddings.", ""]  # fmt: skip
    roof = report.get("roofline")
    if roof:
        lines += ["### Roofline of batch-1 decode", "", f"Memory read bandwidth {roof['bandwidth_gb_per_s']:.1f} GB/s "
                  f"({roof['bandwidth_threads']} threads, numpy sum over {roof['bandwidth_array_mb']} MiB). "
                  f"`{roof['formula']}`.", ""]  # fmt: skip
        lines += _table(
            ["precision", "ctx", "weights MB", "KV MB", "ceiling tok/s", "measured tok/s", "fraction"],
            [[r["precision"], str(r["context"]), _f(r["weight_bytes"] / 1e6, ".1f"), _f(r["kv_bytes"] / 1e6, ".2f"),
              _f(r["ceiling_tokens_per_s"], ".1f"), _f(r["measured_tokens_per_s"], ".1f"), f"{r['fraction']:.0%}"]
             for r in roof["cases"]],
        )  # fmt: skip
    return lines + _image(out, chart, "engine throughput")


def serve_section(report: dict, out: Path, chart: Path | None) -> list[str]:
    cfg = report["config"]
    lines = [
        f"## Serving: {report['model']}",
        "",
        f"{report['url']}, streamed chat completions, max_tokens {cfg['max_tokens']}, greedy; at least "
        f"{cfg['requests']} requests per level (2 × concurrency when more), prompt set {report['prompt_set']}.",
        "",
    ]
    if report.get("interrupted"):
        lines += ["**Interrupted: partial results.**", ""]
    rows = _serve_rows(report["results"])
    header = ["conc", "req", "err", "req/s", "out tok/s", *(f"{m} {p}" for m in ("TTFT", "TPOT", "ITL", "E2E")
              for p in ("p50", "p90", "p99"))]  # fmt: skip
    if "ratios" not in report:  # one server (or a replica comparison written before the ratio table)
        lines += ["Latencies in ms.", "", *_table(header, rows)]
        return lines + _image(out, chart, "serving throughput and latency")
    lines += ["Each server in turn, started on the same engines (one alive at a time). Latencies in ms.", ""]
    for run in report["runs"]:
        lines += [f"### {run['name']} ({run['url']})", "", *_table(header, _serve_rows(run["results"]))]
    compared_header, compared = comparison_table(report)
    lines += ["### Ratios", "", "Output tokens/s (above 1: more) and TTFT p50 (below 1: sooner) over each base run.", "",
              *_table(compared_header, compared)]  # fmt: skip
    return lines + _image(out, chart, f"serving throughput and latency ({report['runs'][0]['name']})")


def _serve_rows(results: list[dict]) -> list[list[str]]:
    return [[str(r["concurrency"]), str(r["requests"]), str(r["errors"]), _f(r["requests_per_s"]),
             _f(r["output_tokens_per_s"], ".1f"), *(_f(r[f"{m}_{p}_ms"], ".1f") for m in ("ttft", "tpot", "itl", "e2e")
             for p in ("p50", "p90", "p99"))] for r in results]  # fmt: skip


def write_report(
    out: Path,
    engines: dict | None,
    serve: dict | None,
    engines_chart: Path | None = None,
    serve_chart: Path | None = None,
) -> None:
    lines = ["# autoglm-trt benchmark", "", f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
             f"{platform.system()} {platform.release()}, Python {platform.python_version()}.", ""]  # fmt: skip
    if engines is not None:
        lines += engines_section(engines, out, engines_chart)
    if serve is not None:
        lines += serve_section(serve, out, serve_chart)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
