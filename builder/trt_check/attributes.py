"""The attribute and input restrictions onnx-tensorrt's support matrix states, per operator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import onnx

_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")  # fmt: skip
_RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _const_input(position: int, what: str) -> Callable:
    def rule(node, index) -> Iterator[str]:
        if len(node.input) > position and node.input[position] and not index.is_const(node.input[position]):
            yield f"{what} ('{node.input[position]}') must be a build-time constant"

    return rule


def _resize(node, index) -> Iterator[str]:
    coords = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
    if coords not in _RESIZE_COORDS:
        yield f"coordinate_transformation_mode '{coords}' is not one of {sorted(_RESIZE_COORDS)}"
    if _text(_attr(node, "mode", "nearest")) not in ("nearest", "linear"):
        yield "only nearest and linear modes are supported"
    if _text(_attr(node, "nearest_mode", "round_prefer_floor")) not in _RESIZE_NEAREST:
        yield "unsupported nearest_mode"
    if _attr(node, "antialias", 0):
        yield "antialiasing is not supported"
    if _text(_attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
        yield "only the 'stretch' aspect ratio policy is supported"


def _topk(node, index) -> Iterator[str]:
    if _attr(node, "sorted", 1) != 1:
        yield "sorted must be 1"
    yield from _const_input(1, "K")(node, index)


def _pool(node, index) -> Iterator[str]:
    if any(d != 1 for d in _attr(node, "dilations", []) or []):
        yield "dilations must be empty or all ones"
    if node.op_type == "MaxPool" and len(node.output) > 1 and index.used(node.output[1]):
        yield "the Indices output is not supported"


def _only_first_output(node, index) -> Iterator[str]:
    if any(index.used(name) for name in node.output[1:]):
        yield "only the first output is supported"


def _constant(node, index) -> Iterator[str]:
    bad = {a.name for a in node.attribute} & {"sparse_value", "value_string", "value_strings"}
    if bad:
        yield f"attributes {sorted(bad)} are not supported"


def _lstm(node, index) -> Iterator[str]:
    if _attr(node, "input_forget", 0) or _attr(node, "layout", 0):
        yield "input_forget and layout must be 0"


def _scatter_nd(node, index) -> Iterator[str]:
    if _text(_attr(node, "reduction", "none")) != "none":
        yield "reduction other than 'none' is not supported"


RULES: dict[str, Callable] = {
    **{op: _const_input(1, "axes") for op in _REDUCE},
    "Squeeze": _const_input(1, "axes"),
    "Unsqueeze": _const_input(1, "axes"),
    "CumSum": _const_input(1, "axis"),
    "OneHot": _const_input(1, "depth"),
    "Dropout": _const_input(2, "training_mode"),
    "Resize": _resize,
    "TopK": _topk,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "LayerNormalization": _only_first_output,
    "Constant": _constant,
    "LSTM": _lstm,
    "ScatterND": _scatter_nd,
}


def check(node: onnx.NodeProto, index) -> Iterator[str]:
    rule = RULES.get(node.op_type)
    if rule is not None:
        yield from rule(node, index)
