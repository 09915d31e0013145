"""fp16 KV for TensorRT plans of int8 and int4 graphs.

Those graphs are quantised from the fp32 export, so their KV pool inputs and `new_kv` are fp32,
while the runtime keeps one fp16 pool for every TensorRT precision. The plan is parsed from a
copy of the graph whose KV I/O is fp16, with Casts to and from the graph's fp32 inside.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import onnx

from runtime import decoder_io as io

FP16_KV_PRECISIONS = ("int8", "int4")  # quantized from the fp32 graph, fp32 KV I/O included
KV_KINDS = ("key_cache", "value_cache")


def fp16_kv(graph: onnx.GraphProto) -> bool:
    """Give a decoder graph fp16 KV I/O in place: the pool inputs (key_cache.L, value_cache.L) and
    new_kv become fp16, with Casts to and from the graph's fp32 inside. The Cast goes after each
    Gather that reads blocks from the pool (so only the blocks a call reads are widened, not the
    pool), else right after the input. False when nothing was fp32 (fp16 graphs, encoders)."""
    wide, half = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    kv = [v for v in graph.input if v.name.split(".")[0] in KV_KINDS and v.type.tensor_type.elem_type == wide]
    outs = [v for v in graph.output if v.name == io.NEW_KV and v.type.tensor_type.elem_type == wide]
    if not kv and not outs:
        return False
    nodes = list(graph.node)
    uses = defaultdict(list)  # tensor name -> [(node position, input index)]
    for position, node in enumerate(nodes):
        for index, name in enumerate(node.input):
            uses[name].append((position, index))
    first, after = [], defaultdict(list)  # Casts at the top, and right after the node at a position
    for value in kv:
        value.type.tensor_type.elem_type = half
        readers = uses[value.name]
        if readers and all(nodes[p].op_type == "Gather" and index == 0 for p, index in readers):
            for position, _ in readers:
                gathered = nodes[position].output[0]
                nodes[position].output[0] = f"{gathered}_fp16"
                after[position].append(_cast(f"{gathered}_fp16", gathered, wide))
        else:
            for position, index in readers:
                nodes[position].input[index] = f"{value.name}_fp32"
            first.append(_cast(value.name, f"{value.name}_fp32", wide))
    for value in outs:
        value.type.tensor_type.elem_type = half
        narrow = f"{value.name}_fp32"
        for position, node in enumerate(nodes):
            for index, name in enumerate(node.input):
                if name == value.name:
                    node.input[index] = narrow
            for index, name in enumerate(node.output):
                if name == value.name:
                    node.output[index] = narrow
                    after[position].append(_cast(narrow, value.name, half))
    rewritten = [*first, *(n for position, node in enumerate(nodes) for n in (node, *after[position]))]
    del graph.node[:]
    graph.node.extend(rewritten)
    return True


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    return onnx.helper.make_node("Cast", [source], [target], name=f"{target}/Cast", to=to)


def fp16_kv_onnx_from_graph(graph: Path) -> Path:
    """`graph` with fp16 KV I/O (fp16_kv), saved beside it as <name>.fp16kv.onnx so external weight
    files resolve from the same folder (they are referenced, not copied); `graph` itself when its
    KV is already fp16."""
    model = onnx.load(str(graph), load_external_data=False)
    if not fp16_kv(model.graph):
        return graph
    out = graph.with_name(f"{graph.name.removesuffix('.onnx')}.fp16kv.onnx")
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out
