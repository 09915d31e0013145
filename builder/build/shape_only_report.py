"""What a shape-only check reports per graph: nodes, inputs/outputs, weight bytes (printed and JSON)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from rich.table import Table

from builder.model_dir import ModelDir
from builder.trt_check.findings import CheckReport
from runtime.build_records import write_json_atomic
from runtime.manifest import TensorSpec
from runtime.progress import console
from runtime.shape_only import is_shape_only, tensor_bytes

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class GraphSummary:
    component: str
    precision: str
    graph: str
    nodes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    weight_bytes: int  # what the initializers hold, or would hold: shape-only ones by dims × type
    weight_tensors: int
    shape_only_tensors: int
    dequantize_nodes: int
    tensorrt_passed: bool  # TensorRT's ONNX parser check (builder/trt_check)
    tensorrt_errors: int
    tensorrt_warnings: int


def _specs(values) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        specs.append(TensorSpec(value.name, dtype, [d.dim_param or d.dim_value for d in tensor.shape.dim]))
    return specs


def summarise(component: str, precision: str, graph: Path, check: CheckReport) -> GraphSummary:
    model = onnx.load(str(graph), load_external_data=False)
    weights = model.graph.initializer
    ops = Counter(node.op_type for node in model.graph.node)
    return GraphSummary(
        component=component,
        precision=precision,
        graph=graph.name,
        nodes=len(model.graph.node),
        inputs=_specs(model.graph.input),
        outputs=_specs(model.graph.output),
        weight_bytes=sum(tensor_bytes(t) for t in weights),
        weight_tensors=len(weights),
        shape_only_tensors=sum(is_shape_only(t) for t in weights),
        dequantize_nodes=ops["DequantizeLinear"],
        tensorrt_passed=check.passed,
        tensorrt_errors=len(check.errors),
        tensorrt_warnings=len(check.warnings),
    )


def compact(specs: list[TensorSpec]) -> list[tuple[str, str, list]]:
    """(name, dtype, shape), numbered names of one type and shape folded into one row
    (key_cache.0 … key_cache.39 → key_cache.{0..39}): a 40-layer decoder's inputs fit on a screen."""
    groups: dict[tuple, list[int]] = {}  # (stem, dtype, shape) → numbers; insertion order kept
    for spec in specs:
        match = _NUMBERED.match(spec.name)
        stem, number = (match[1], int(match[2])) if match else (spec.name, None)
        groups.setdefault((stem, spec.dtype, tuple(spec.shape)), []).append(number)
    rows = []
    for (stem, dtype, shape), numbers in groups.items():
        if numbers == [None]:
            name = stem
        elif len(numbers) == 1:
            name = f"{stem}{numbers[0]}"
        else:
            name = f"{stem}{{{min(numbers)}..{max(numbers)}}}"
        rows.append((name, dtype, list(shape)))
    return rows


def print_summaries(summaries: list[GraphSummary]) -> None:
    table = Table(title="Shape-only graphs (weights never materialised)", title_justify="left")
    table.add_column("graph", no_wrap=True, min_width=max(len(s.graph) for s in summaries))
    for column in ("nodes", "DQ", "tensors", "GiB", "TensorRT"):  # fits 80 columns
        table.add_column(column, justify="right", no_wrap=True)
    for s in summaries:
        table.add_row(s.graph, str(s.nodes), str(s.dequantize_nodes), str(s.weight_tensors),
                      f"{s.weight_bytes / 2**30:.2f}", "[green]ok[/]" if s.tensorrt_passed else "[red]FAIL[/]")  # fmt: skip
    console.print(table)
    for s in summaries:
        console.print(f"{s.graph}")
        for kind, specs in (("in ", s.inputs), ("out", s.outputs)):
            for name, dtype, shape in compact(specs):
                console.print(f"  {kind} {name:<26} {dtype:<8} {shape}", markup=False)


def write_report(
    path: Path,
    model_dir: ModelDir,
    summaries: list[GraphSummary],
    skipped: dict,
    seconds: float,
    extra: dict | None = None,
) -> None:
    write_json_atomic(
        path,
        {
            "model": str(model_dir.path),
            "shape_only": True,
            "graphs": [asdict(s) for s in summaries],
            "skipped": skipped,
            "seconds": round(seconds, 1),
            **(extra or {}),
        },
    )
