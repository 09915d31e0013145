"""Print check reports as one table (per graph) plus the findings of graphs that fail."""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from builder.errors import BuildError
from builder.trt_check.findings import CheckReport
from builder.trt_check.support import SOURCE, TARGET_TENSORRT
from runtime.progress import console

SHOWN_PER_GRAPH = 12


class TensorRTCompatError(BuildError):
    """A graph the TensorRT backend would consume uses something TensorRT's parser cannot import."""


def _qdq_pairs(report: CheckReport) -> int:
    return report.op_counts.get("QuantizeLinear", 0) + report.op_counts.get("DequantizeLinear", 0)


def print_reports(reports: list[CheckReport]) -> None:
    table = Table(
        title=f"TensorRT {TARGET_TENSORRT} ONNX parser compatibility ({SOURCE})", title_justify="left"
    )
    width = max([len(r.graph) for r in reports] + [5])
    table.add_column("graph", no_wrap=True, min_width=width)
    for column in ("nodes", "ops", "Q/DQ", "errors", "warn", "result"):  # fits 80 columns
        table.add_column(column, justify="right", no_wrap=True)
    for report in reports:
        table.add_row(
            report.graph,
            str(report.nodes),
            str(len(report.op_counts)),
            str(_qdq_pairs(report)),
            str(len(report.errors)),
            str(len(report.warnings)),
            "[green]ok[/]" if report.passed else "[red]FAIL[/]",
        )
    console.print(table)
    for report in reports:
        if not report.findings:
            continue
        rules = Counter(f"{f.severity} {f.rule}" for f in report.findings)
        console.print(f"{report.graph}: " + ", ".join(f"{n} × {rule}" for rule, n in sorted(rules.items())))
        for finding in report.findings[:SHOWN_PER_GRAPH]:
            console.print(f"  {finding.line()}", markup=False)
        if len(report.findings) > SHOWN_PER_GRAPH:
            console.print(f"  … and {len(report.findings) - SHOWN_PER_GRAPH} more")


def raise_on_failure(reports: list[CheckReport]) -> None:
    failed = [r for r in reports if not r.passed]
    if failed:
        first = failed[0].errors[0]
        raise TensorRTCompatError(
            f"{len(failed)} of {len(reports)} graphs are not TensorRT-compatible "
            f"({', '.join(r.graph for r in failed)}); first problem: {failed[0].graph}: {first.line()}. "
            "Graphs for TensorRT must use only default-domain ONNX ops from its parser's support list "
            "(see the table above)"
        )
