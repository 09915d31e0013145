"""Precision lives in the graph: rewrite an fp32 ONNX decoder to fp16, keeping fragile maths fp32.

Kept in fp32: rotary angles (positions × inverse frequencies reach thousands of radians; fp16 would
lose whole radians), each RMSNorm's statistics from x² to x·rsqrt (Llama-family models carry
"massive activations" near 25,000 whose squares overflow fp16's 65,504), and Softmax. The KV
pool and new K/V are fp16 (half the memory); logits stay fp32 for sampling and accuracy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
from onnxruntime.transformers import float16
from onnxruntime.transformers.float16 import convert_float_to_float16

from runtime import decoder_io as io
from runtime.onnx_files import save_graph

FP32_OP_TYPES = ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "Softmax", "Cos", "Sin", "Range")
RMSNORM_CHAIN = ("ReduceMean", "Add", "Sqrt", "Reciprocal", "Div", "Mul")
# Graph inputs/outputs kept fp32: logits (sampling), and the media encoders' pixel/feature inputs
# and embeddings, so an encoder's I/O contract is the same at every precision.
FP32_OUTPUTS = (io.LOGITS, "pixel_values", "input_features", "embeddings")
PASS_VERSION = 3  # bump when the rewrite changes, so builds redo their fp16 graphs


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _rope_ancestors(graph: onnx.GraphProto) -> set[str]:
    """Names of all nodes that feed a Cos or Sin (the rotary angle computation)."""
    producer = {output: node for node in graph.node for output in node.output}
    pending = [node for node in graph.node if node.op_type in ("Cos", "Sin")]
    seen: set[str] = set()
    while pending:
        node = pending.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        pending += [producer[name] for name in node.input if name in producer]
    return seen


def _rmsnorm_chains(graph: onnx.GraphProto) -> set[str]:
    """Nodes of every Pow → ReduceMean → Add(eps) → Sqrt → Reciprocal → Mul(x, ·) chain."""
    users = _consumers(graph)
    keep: set[str] = set()
    for node in graph.node:
        if node.op_type != "Pow":
            continue
        chain, current = [node], node
        while current.op_type != "Mul":
            following = users[current.output[0]]
            if len(following) != 1 or following[0].op_type not in RMSNORM_CHAIN:
                break
            current = following[0]
            chain.append(current)
        if current.op_type == "Mul":
            keep.update(n.name for n in chain)
    return keep


def _skip_round_trips(graph: onnx.GraphProto, fp32_nodes: set[str]) -> None:
    """The converter casts every fp32 node's output to fp16, then back to fp32 for the next fp32
    node. Feed the next node the fp32 value directly: exact, and no overflow in between."""
    producer = {output: node for node in graph.node for output in node.output}
    to_fp16 = onnx.TensorProto.FLOAT16
    replace: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Cast" or node.attribute[0].i != onnx.TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or first.op_type != "Cast" or first.attribute[0].i != to_fp16:
            continue
        source = producer.get(first.input[0])
        if source is not None and source.name in fp32_nodes:
            replace[node.output[0]] = first.input[0]
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in replace:
                node.input[index] = replace[name]
    graph_outputs = {o.name for o in graph.output}
    used = {name for node in graph.node for name in node.input} | graph_outputs
    live = [n for n in graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(live)


def _tidy(graph: onnx.GraphProto) -> None:
    """Repair two more habits of the converter: it inserts the same Cast twice when one tensor feeds
    two fp32 nodes (identical copies, so keeping one is exact), and appends Casts after their
    consumers (the ONNX checker and TensorRT's parser want topological order). Its value_info
    also keeps stale dtypes, so intermediate type annotations are dropped (they are optional)."""
    unique: dict[bytes, onnx.NodeProto] = {}
    for node in graph.node:
        unique.setdefault(node.SerializeToString(), node)
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(unique.values()), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError(f"fp16 graph has a cycle or a dangling input near {pending[0].name}")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)
    del graph.value_info[:]


def _restore_shapes(model: onnx.ModelProto, shapes: dict[str, onnx.TensorShapeProto]) -> onnx.ModelProto:
    """The rewritten model with value_info from shape inference (right dtypes) carrying the fp32
    export's shapes: inference alone loses dims such as the head count of a Reshape to
    [B, S, -1, D], which the ORT engine step's fusions need (builder/build/ort_fusion/)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for info in inferred.graph.value_info:
        if info.name in shapes:
            info.type.tensor_type.shape.CopyFrom(shapes[info.name])
    return inferred


def fp16_from_fp32(src: Path, dst: Path) -> None:
    """The graph is rewritten without its external weights (a model over 2 GB could not even be
    shape-inferred in memory); they are then streamed into dst's data file, converted one by one."""
    converted = fp16_model(onnx.load(str(src), load_external_data=False))
    save_graph(converted, dst, weights_from=src.parent, convert=_stored_as_fp16)
    onnx.checker.check_model(str(dst))  # by path: external data is checked where it now lives


def _stored_as_fp16(tensor: onnx.TensorProto, stored: np.ndarray) -> np.ndarray:
    """A weight the converter retyped to fp16 while its fp32 bytes stayed on disk: convert them as
    the converter does inline weights (clamped to fp16's finite range); any other weight as stored."""
    if tensor.data_type == onnx.TensorProto.FLOAT16 and stored.nbytes == 4 * math.prod(tensor.dims):
        return float16.convert_np_to_float16(stored.view(np.float32))
    return stored


def fp16_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 rewrite of `model`, in memory. Loaded weights are converted; shape-only ones
    (runtime/shape_only.py) are only retyped, which is all a check of the graph needs."""
    shapes = {v.name: onnx.TensorShapeProto() for v in model.graph.value_info}
    for info in model.graph.value_info:
        shapes[info.name].CopyFrom(info.type.tensor_type.shape)
    keep = {node.name for node in model.graph.node if node.op_type in FP32_OP_TYPES}
    keep |= _rope_ancestors(model.graph) | _rmsnorm_chains(model.graph)
    # ORT's converter decodes each converted initializer again only to learn its shape: give it
    # the dims, which shape-only weights have too (and nothing is decoded twice).
    with mock.patch.object(float16, "make_value_info_from_tensor", _value_info_from_dims):
        converted = convert_float_to_float16(
            model,
            keep_io_types=list(FP32_OUTPUTS),
            op_block_list=list(FP32_OP_TYPES),
            node_block_list=sorted(keep),
        )
    _tidy(converted.graph)
    _skip_round_trips(converted.graph, keep)
    return _restore_shapes(converted, shapes)


def _value_info_from_dims(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
