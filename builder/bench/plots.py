"""PNG charts of the benchmark reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from builder.bench.results import ordered
from runtime.errors import RuntimeUserError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeUserError("--plot needs matplotlib; install it: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_engines(report: dict, path: Path) -> None:
    """One panel per component and phase: tokens/s against batch (decode, encode) or prompt length
    (prefill), a line per precision (and per context for decode, per batch for prefill)."""
    plt = _pyplot()
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in report["results"]:
        groups.setdefault((row["component"], row["phase"]), []).append(row)
    if not groups:
        raise RuntimeUserError("nothing was measured, so there is nothing to plot")
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    styles = ("-", "--", ":", "-.")
    for ax, ((component, phase), rows) in zip(axes[0], groups.items(), strict=True):
        x_key = "seq" if phase == "prefill" else "batch"
        series_key = {"prefill": "batch", "decode": "context"}.get(phase)
        series = sorted({r[series_key] if series_key else 0 for r in rows})
        for color, precision in enumerate(ordered({r["precision"] for r in rows})):
            for style, extra in enumerate(series):
                line = sorted(
                    (
                        r
                        for r in rows
                        if r["precision"] == precision and (series_key is None or r[series_key] == extra)
                    ),
                    key=lambda r: r[x_key],
                )
                if not line:
                    continue
                label = precision
                if phase == "prefill" and extra != 1:
                    label = f"{precision} b{extra}"
                elif phase == "decode":
                    label = f"{precision} ctx {extra}"
                ax.plot([r[x_key] for r in line], [r["tokens_per_s"] for r in line], marker="o", label=label,
                        color=f"C{color}", linestyle=styles[style % len(styles)])  # fmt: skip
        ticks = sorted({r[x_key] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("prompt tokens" if phase == "prefill" else "batch")
        ax.set_ylabel("tokens/s (p50)" if phase != "encode" else "embeddings/s (p50)")
        ax.set_title(f"{component} {phase}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{report['config'].get('model') or ''} engines")
    _save(fig, path)
    plt.close(fig)


def plot_serve(report: dict, path: Path) -> None:
    """Throughput (output tokens/s, requests/s) and latency (TTFT, TPOT p50 with p90) vs concurrency."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    rows = sorted(report["results"], key=lambda r: r["concurrency"])
    if not rows:
        raise RuntimeUserError("nothing was measured, so there is nothing to plot")
    conc = [r["concurrency"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(conc, [r["output_tokens_per_s"] for r in rows], marker="o", color="tab:blue")
    left.set_ylabel("output tokens/s", color="tab:blue")
    twin = left.twinx()
    twin.plot(conc, [r["requests_per_s"] for r in rows], marker="s", linestyle="--", color="tab:orange")
    twin.set_ylabel("requests/s", color="tab:orange")
    left.set_title("throughput")
    for metric, color in (("ttft", "tab:red"), ("tpot", "tab:green")):
        p50 = [r[f"{metric}_p50_ms"] for r in rows]
        right.plot(conc, p50, marker="o", color=color, label=f"{metric.upper()} p50")
        right.plot(
            conc,
            [r[f"{metric}_p90_ms"] for r in rows],
            linestyle=":",
            color=color,
            label=f"{metric.upper()} p90",
        )
    right.set_yscale("log")
    for axis_formatter in (right.yaxis.set_major_formatter, right.yaxis.set_minor_formatter):
        axis_formatter(ScalarFormatter())  # 40, 60, 100 rather than 4×10¹, 6×10¹, 10²
    right.set_ylabel("ms")
    right.set_title("latency")
    right.legend()
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrent requests")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"serving {report.get('model', '')}")
    _save(fig, path)
    plt.close(fig)
