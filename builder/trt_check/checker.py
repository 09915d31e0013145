"""Static checks of one ONNX graph against TensorRT's ONNX parser (see support.py for the source).

Checked: opset range and domains (no `com.microsoft` or other contrib domains), every op in the
parser's support matrix, the data type of each op's data tensor, the attribute restrictions the
matrix states, and Q/DQ placement that TensorRT's explicit quantization can fuse (qdq.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from builder.trt_check import attributes, qdq
from builder.trt_check.findings import CheckReport, Finding
from builder.trt_check.support import (
    DATA_INPUT,
    DEFAULT_DOMAINS,
    OPSET_RANGE,
    PARSER_TYPES,
    SHAPE_ONLY,
    SUPPORTED_OPS,
    TARGET_TENSORRT,
)

# Ops whose outputs are constant when all their inputs are (enough to resolve `axes` inputs).
_FOLDABLE = frozenset({"Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze", "Concat", "Neg", "Mul", "Add"})


class GraphIndex:
    """Types, producers, consumers and constant-ness of every tensor name in a graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_io = {v.name for v in graph.input} | {v.name for v in graph.output}
        self.dtypes: dict[str, str] = {}
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                self.dtypes[value.name] = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        for tensor in graph.initializer:
            self.dtypes[tensor.name] = onnx.TensorProto.DataType.Name(tensor.data_type)
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = set(self.initializers)
        for node in graph.node:  # nodes are topologically sorted in a valid graph
            if node.op_type == "Constant" or (
                node.op_type in _FOLDABLE and all(not i or i in self.constants for i in node.input)
            ):
                self.constants.update(node.output)
                if node.op_type == "Constant" and node.attribute:
                    value = node.attribute[0]
                    if value.type == onnx.AttributeProto.TENSOR:
                        self.initializers.setdefault(node.output[0], value.t)
                        self.dtypes.setdefault(
                            node.output[0], onnx.TensorProto.DataType.Name(value.t.data_type)
                        )

    def dtype(self, name: str) -> str | None:
        return self.dtypes.get(name)

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def used(self, name: str) -> bool:
        return bool(name) and (name in self.consumers or name in self.graph_io)


def _with_types(model: onnx.ModelProto) -> onnx.ModelProto:
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for tensor in light.graph.initializer:  # inference needs dims and types, not weights
        if len(tensor.raw_data) > 4096:
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            tensor.external_data.add(key="location", value="(not loaded)")
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=False)
    except Exception:  # inference is best effort; unknown types are simply not checked
        return model


def check_model(model: onnx.ModelProto, name: str) -> CheckReport:
    report = CheckReport(graph=name, nodes=len(model.graph.node))
    report.op_counts = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node)
    add = report.findings.append
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            low, high = OPSET_RANGE
            if not low <= opset.version <= high:
                add(
                    Finding(
                        "error",
                        "opset",
                        "(model)",
                        "-",
                        f"opset {opset.version} is outside TensorRT "
                        f"{TARGET_TENSORRT}'s range {low}–{high}; re-export with opset in that range",
                    )
                )
        elif any(n.domain == opset.domain for n in model.graph.node):
            add(
                Finding(
                    "error",
                    "domain",
                    "(model)",
                    "-",
                    f"imports operator domain '{opset.domain}', which "
                    "TensorRT's ONNX parser does not know (it imports the default ONNX domain only)",
                )
            )
    if model.functions:
        add(
            Finding(
                "warning",
                "function",
                "(model)",
                "-",
                f"{len(model.functions)} local functions: the "
                "parser inlines them; their bodies are not checked here",
            )
        )
    index = GraphIndex(_with_types(model))
    for node in model.graph.node:
        _check_node(node, index, add)
    for finding in qdq.check(index):
        add(finding)
    return report


def _check_node(node: onnx.NodeProto, index: GraphIndex, add) -> None:
    name, op = node.name or node.output[0], node.op_type
    if node.domain not in DEFAULT_DOMAINS:
        add(
            Finding(
                "error",
                "domain",
                name,
                f"{node.domain}.{op}",
                f"'{node.domain}' is not the default ONNX "
                "domain (an ONNX Runtime contrib op or a custom op); TensorRT's parser cannot import it",
            )
        )
        return
    types = SUPPORTED_OPS.get(op)
    if types is None:
        add(
            Finding(
                "error",
                "unsupported-op",
                name,
                op,
                f"{op} is not supported by TensorRT {TARGET_TENSORRT}'s ONNX parser",
            )
        )
        return
    for tensor in [*node.input, *node.output]:
        dtype = index.dtype(tensor) if tensor else None
        if dtype and (
            dtype not in PARSER_TYPES
            or (
                dtype == "UINT8"
                and tensor not in index.graph_io
                and op not in ("QuantizeLinear", "DequantizeLinear")
            )
        ):
            add(
                Finding(
                    "error",
                    "dtype",
                    name,
                    op,
                    f"tensor '{tensor}' is {dtype}, which TensorRT cannot "
                    "hold (UINT8 only as a network input or output)",
                )
            )
            return
    position = DATA_INPUT.get(op, 0)
    data = node.input[position] if len(node.input) > position else ""
    dtype = index.dtype(data) if data else None
    if dtype and op not in SHAPE_ONLY and dtype not in types:
        add(
            Finding(
                "error",
                "dtype",
                name,
                op,
                f"input '{data}' is {dtype}; TensorRT's {op} takes {', '.join(sorted(types))}",
            )
        )
    if op == "Cast":
        target = next((a.i for a in node.attribute if a.name == "to"), 0)
        target_name = onnx.TensorProto.DataType.Name(target) if target else "?"
        if target_name not in types:
            add(
                Finding(
                    "error",
                    "dtype",
                    name,
                    op,
                    f"casts to {target_name}; TensorRT's Cast produces {', '.join(sorted(types))}",
                )
            )
    for message in attributes.check(node, index):
        add(Finding("error", "attribute", name, op, message))


def check_graph(path: Path) -> CheckReport:
    """Check the ONNX file at `path` (weights in external data are not loaded: not needed)."""
    model = onnx.load(str(path), load_external_data=False)
    return check_model(model, path.name)
