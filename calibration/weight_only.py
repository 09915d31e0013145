"""Weight-only quantisation: a DequantizeLinear on a constant weight, the activation left float.

Two schemes, both symmetric (no zero point, so TensorRT can fuse them; ORT's engine step turns them
into MatMulNBits / GatherBlockQuantized):

- int8 per channel: `DequantizeLinear(Wq int8 [K, N], scale float32 [N], axis=1)` → MatMul
  (for Gemm with transB the weight is [N, K] and the axis 0), scale = max|W[:, n]| / 127;
- int4 per block along the contracted axis K: `DequantizeLinear(Wq int4 [K, N], scale float32
  [ceil(K/bs), N], axis=0, block_size=bs)` → MatMul; rounded to nearest, scale = max|block| / 7
  and values in [-7, 7], or GPTQ-rounded (calibration/gptq.py: values in [-8, 7], a searched
  scale); a K not divisible by bs has a shorter last block, which the ONNX spec allows (scale
  rows = ceil(K/bs)).

The tied embedding (the lm_head reading the embedding Gather's table [V, H] transposed: torch's
dynamo export writes SmolLM2's as a Transpose node of the table; a stored [H, V] copy equal to the
transpose is recognised too) is stored once, per vocab row:
    Tq [V, H] → DequantizeLinear (`<T>_dq`) → Gather(·, input_ids)            (embedding)
                                           → Transpose(perm=[1, 0]) → MatMul   (lm_head)
int8: scale [V], axis 0; int4: blocks along H, scale [V, ceil(H/bs)], axis 1, GPTQ-rounded like any
int4 weight against the lm_head's input when there are samples of it. An untied embedding
table gets an int8 per-row DequantizeLinear feeding its Gathers at any precision; its lm_head is
quantised like any other weight.

Naming: a weight initializer W becomes `W_q` (int8/int4) and `W_scale` (float32), read by the node
`W_DequantizeLinear` whose output is `W_dq`. The tied lm_head keeps the export's own
`Transpose(T)` (now reading `T_dq`); where the export stored a transposed copy instead, the copy
is dropped and a new `T_dq_Transpose` node (output `T_dq_T`) feeds the lm_head.
Weights with fewer than MIN_ELEMENTS values (biases are never touched) stay float.

Shape-only weights (runtime/shape_only.py: a model checked at a size this machine cannot hold)
get the same nodes with shape-only quantised weights and scales; a tied table is then found only
in the Transpose form (comparing a stored copy needs the values).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from calibration.gptq import gptq_int4
from runtime.shape_only import is_shape_only, shape_only_tensor

INT8_MAX, INT4_MAX = 127, 7
MIN_ELEMENTS = 1024  # smaller weights (e.g. a 2-D bias-like constant) gain nothing from int8/int4
WEIGHT_OPS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class Scheme:
    """int8 per output channel (block_size 0) or int4 in blocks of `block_size` along K."""

    bits: int  # 8 or 4
    block_size: int = 0  # int4 only

    def __post_init__(self) -> None:
        assert (self.bits, self.block_size > 0) in ((8, False), (4, True)), self


INT8 = Scheme(8)


# ---------------------------------------------------------------- numerics (pure numpy)


def quantise_int8(w: np.ndarray, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 per channel along `channel_axis` of a 2-D weight: (q int8, scale float32 [C])."""
    w = np.asarray(w, np.float32)
    reduce = 1 - channel_axis
    amax = np.abs(w).max(axis=reduce)
    scale = np.where(amax > 0, amax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / np.expand_dims(scale, reduce)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scale


def quantise_int4(w: np.ndarray, block_size: int, block_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """int4 symmetric in blocks of `block_size` along `block_axis` of a 2-D weight.
    Returns (q int8 holding values in [-7, 7], same shape as w; scale float32 with the blocked axis
    of length ceil(K / block_size))."""
    w = np.asarray(w, np.float32)
    moved = np.moveaxis(w, block_axis, 0)  # [K, N]
    k, n = moved.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float32)
    padded[:k] = moved
    amax = np.abs(padded.reshape(blocks, block_size, n)).max(axis=1)  # [blocks, N]
    scale = np.where(amax > 0, amax / INT4_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(moved / np.repeat(scale, block_size, axis=0)[:k]), -INT4_MAX, INT4_MAX)
    return np.moveaxis(q.astype(np.int8), 0, block_axis), np.moveaxis(scale, 0, block_axis)


def dequantise(q: np.ndarray, scale: np.ndarray, axis: int, block_size: int = 0) -> np.ndarray:
    """DequantizeLinear's maths (zero point 0): per channel when block_size is 0, else per block."""
    q = np.asarray(q, np.float32)
    if not block_size:
        return q * np.expand_dims(scale, 1 - axis)
    full = np.repeat(scale, block_size, axis=axis)
    return q * np.take(full, np.arange(q.shape[axis]), axis=axis)


def fake_quantise(w: np.ndarray, scheme: Scheme, contracted_axis: int = 0) -> np.ndarray:
    """W after quantise + dequantise: what the graph computes with (for error searches and tests)."""
    if scheme.bits == 8:
        q, scale = quantise_int8(w, 1 - contracted_axis)
        return dequantise(q, scale, 1 - contracted_axis)
    q, scale = quantise_int4(w, scheme.block_size, contracted_axis)
    return dequantise(q, scale, contracted_axis, scheme.block_size)


# ---------------------------------------------------------------- ONNX tensors and nodes


def int4_tensor(name: str, q: np.ndarray) -> onnx.TensorProto:
    """An INT4 initializer from int8-held values in [-8, 7], packed two per byte, low nibble first."""
    flat = q.astype(np.int8).ravel()
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nibbles = flat.view(np.uint8) & 0x0F
    packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, onnx.TensorProto.INT4, list(q.shape), packed.tobytes(), raw=True)


def int4_values(tensor: onnx.TensorProto) -> np.ndarray:
    """The int8-held values of an INT4 initializer (the inverse of int4_tensor)."""
    packed = np.frombuffer(tensor.raw_data, np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=1).ravel()[: int(np.prod(tensor.dims))]
    return ((nibbles.astype(np.int8) ^ 8) - 8).reshape(tuple(tensor.dims))


def _dq_node(weight: str, scheme: Scheme, axis: int, out: str | None = None) -> onnx.NodeProto:
    attrs = {"axis": axis} | ({"block_size": scheme.block_size} if scheme.bits == 4 else {})
    return helper.make_node(
        "DequantizeLinear", [f"{weight}_q", f"{weight}_scale"], [out or f"{weight}_dq"],
        name=f"{weight}_DequantizeLinear", **attrs,
    )  # fmt: skip


def _weight_tensors(
    name: str, weight: onnx.TensorProto, scheme: Scheme, axis: int, inputs: np.ndarray | None = None
) -> list[onnx.TensorProto]:
    """Wq and its scale (`axis`: the contracted one); int4 with `inputs` (rows of the activation
    the weight multiplies) is GPTQ-rounded, else rounded to nearest."""
    if is_shape_only(weight):
        return _shape_only_tensors(name, tuple(weight.dims), scheme, axis)
    w = numpy_helper.to_array(weight)
    if scheme.bits == 8:
        q, scale = quantise_int8(w, 1 - axis)
        q_tensor = numpy_helper.from_array(q, f"{name}_q")
    else:
        if inputs is None:
            q, scale = quantise_int4(w, scheme.block_size, axis)
        elif axis == 0:
            q, scale = gptq_int4(w, inputs, scheme.block_size)
        else:
            q, scale = (a.T for a in gptq_int4(w.T, inputs, scheme.block_size))
        q_tensor = int4_tensor(f"{name}_q", q)
    return [q_tensor, numpy_helper.from_array(scale, f"{name}_scale")]


def _shape_only_tensors(
    name: str, dims: tuple[int, int], scheme: Scheme, contracted_axis: int
) -> list[onnx.TensorProto]:
    """What `_weight_tensors` writes, as shape-only stand-ins: Wq of the weight's shape, and the
    scale per output channel (int8) or per block of the contracted axis (int4)."""
    if scheme.bits == 8:
        q_type, scale_dims = onnx.TensorProto.INT8, [dims[1 - contracted_axis]]
    else:
        q_type, scale_dims = onnx.TensorProto.INT4, list(dims)
        scale_dims[contracted_axis] = -(-dims[contracted_axis] // scheme.block_size)
    return [
        shape_only_tensor(f"{name}_q", q_type, dims),
        shape_only_tensor(f"{name}_scale", onnx.TensorProto.FLOAT, scale_dims),
    ]


# ---------------------------------------------------------------- graph rewrite


@dataclass
class WeightOnlyReport:
    quantised: list[str] = field(default_factory=list)  # node names reading a dequantised weight
    kept_float: dict[str, str] = field(default_factory=dict)  # node name -> why
    tied_embedding: str | None = None  # the shared table's initializer, when stored once
    embedding_tables: list[str] = field(default_factory=list)  # untied tables read only by Gathers

    def as_dict(self) -> dict:
        return {
            "weight_only_nodes": len(self.quantised),
            "weight_only_kept_float": self.kept_float,
            "tied_embedding": self.tied_embedding,
            "embedding_tables": self.embedding_tables,
        }


def _contracted_axis(node: onnx.NodeProto) -> int:
    """Axis of the weight (input 1) that the op contracts: K of [K, N] (Gemm with transB: [N, K])."""
    if node.op_type == "Gemm":
        return 1 if any(a.name == "transB" and a.i for a in node.attribute) else 0
    return 0


def weight_only(
    model: onnx.ModelProto,
    scheme: Scheme,
    skip: Iterable[str] = (),
    tie_embedding: bool = True,
    table_scheme: Scheme | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
) -> WeightOnlyReport:
    """Rewrite, in place, every MatMul/Gemm whose weight is a float 2-D initializer (and whose name
    is not in `skip`) to read it through a DequantizeLinear; tied embeddings are stored once, with
    `table_scheme` (default: `scheme`). `inputs` (int4 only) maps a MatMul's activation to sample
    rows of it, and that MatMul's weight is GPTQ-rounded against them; an int4 tied table against
    the lm_head's input (what the embedding reads of it, single rows, has no input to weigh its
    error by). The model must hold its weights."""
    g = model.graph
    report = WeightOnlyReport()
    inits = {i.name: i for i in g.initializer}
    readers = _readers(g)
    skip = set(skip)
    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # insert before the node at this index
    done: dict[str, str] = {}  # weight initializer -> the dequantised tensor replacing it
    position = {id(node): i for i, node in enumerate(g.node)}

    if tie_embedding:
        tied = _tied_embedding(g, inits, readers, skip)
        if tied is not None:
            t_name, table, matmul, transpose = tied
            tscheme = table_scheme or scheme
            axis = 1 if tscheme.bits == 4 else 0  # blocks along H (int4) / one scale per vocab row (int8)
            rows = inputs.get(matmul.input[0]) if inputs else None
            g.initializer.extend(_weight_tensors(t_name, table, tscheme, 1, rows))
            dq = _dq_node(t_name, tscheme, axis)
            first = min(position[id(n)] for n in readers[t_name])
            new_nodes.setdefault(first, []).append(dq)
            for node in readers[t_name]:
                node.input[0] = dq.output[0]  # the Gathers' table, or the existing Transpose's input
            if transpose is None:
                transpose = helper.make_node("Transpose", [dq.output[0]], [f"{dq.output[0]}_T"],
                                             name=f"{dq.output[0]}_Transpose", perm=[1, 0])  # fmt: skip
                new_nodes.setdefault(position[id(matmul)], []).append(transpose)
                done[matmul.input[1]] = transpose.output[0]
                matmul.input[1] = transpose.output[0]
            done[t_name] = dq.output[0]
            report.tied_embedding = t_name
            report.quantised.append(matmul.name)

    # Untied tables (GLM's 151,552 × 4096: 2.5 GB in fp32) are rows looked up, never multiplied:
    # int8 per row at any precision (int4 blocks cost glm4v-tiny's int4 logits cosine 0.77 vs 0.85+).
    for t_name, table in _gather_tables(g, inits).items():
        small = int(np.prod(table.dims)) < MIN_ELEMENTS
        if t_name in done or t_name in skip or small or not _only_gathers(readers[t_name], t_name, None):
            continue
        g.initializer.extend(_weight_tensors(t_name, table, INT8, axis=1))
        dq = _dq_node(t_name, INT8, 0)
        new_nodes.setdefault(min(position[id(n)] for n in readers[t_name]), []).append(dq)
        for node in readers[t_name]:
            node.input[0] = done[t_name] = dq.output[0]
        report.embedding_tables.append(t_name)

    for node in g.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.name in skip:
            continue
        w_name = node.input[1]
        if w_name in done:  # a weight shared by several nodes: one DequantizeLinear
            node.input[1] = done[w_name]
            report.quantised.append(node.name)
            continue
        init = inits.get(w_name)
        if init is None or node.input[0] in inits:
            continue  # not a constant weight (already dequantised, or activation × activation)
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2:
            report.kept_float[node.name] = f"weight {w_name} is not a 2-D float32 initializer"
            continue
        if int(np.prod(init.dims)) < MIN_ELEMENTS:
            report.kept_float[node.name] = (
                f"weight {w_name} has {int(np.prod(init.dims))} values (< {MIN_ELEMENTS})"
            )
            continue
        axis = _contracted_axis(node)
        rows = inputs.get(node.input[0]) if inputs else None
        g.initializer.extend(_weight_tensors(w_name, init, scheme, axis, rows))
        dq = _dq_node(w_name, scheme, axis if scheme.bits == 4 else 1 - axis)
        first = min(position[id(n)] for n in readers[w_name])
        new_nodes.setdefault(first, []).append(dq)
        node.input[1] = done[w_name] = dq.output[0]
        report.quantised.append(node.name)

    nodes = list(g.node)
    del g.node[:]
    for i, node in enumerate(nodes):
        g.node.extend(new_nodes.get(i, []))
        g.node.append(node)
    _drop_unused_initializers(model)
    return report


def weight_inputs(model: onnx.ModelProto) -> list[str]:
    """The activation inputs of the MatMul/Gemm nodes `weight_only` quantises (each once), the
    tied lm_head's included."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    found: dict[str, None] = {}
    for node in g.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[0] in inits:
            continue
        w = inits.get(node.input[1])
        float_2d = w is not None and w.data_type == onnx.TensorProto.FLOAT and len(w.dims) == 2
        if float_2d and int(np.prod(w.dims)) >= MIN_ELEMENTS:
            found[node.input[0]] = None
    # A transposed table is no initializer; the other tied form's weight is, and was found above.
    tied = _tied_embedding(g, inits, _readers(g), skip=set(), by_value=False)
    if tied is not None:
        found[tied[2].input[0]] = None
    return list(found)


def _readers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Each tensor name → the nodes that read it."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for x in node.input:
            readers.setdefault(x, []).append(node)
    return readers


def _gather_tables(g, inits) -> dict[str, onnx.TensorProto]:
    """2-D float initializers that Gathers read along axis 0: embedding tables."""
    tables = {}
    for node in g.node:
        if node.op_type == "Gather" and node.input[0] in inits:
            init = inits[node.input[0]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if axis == 0 and len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT:
                tables[init.name] = init
    return tables


def _tied_embedding(g, inits, readers, skip, by_value: bool = True):
    """(table name, table [V, H] initializer, lm_head MatMul, Transpose node or None) when the lm_head reads
    the embedding Gather's table transposed, else None. Two forms: a Transpose(perm=[1, 0]) of the
    table itself (what torch's dynamo export writes for SmolLM2's tied weights), or a separate
    initializer [H, V] equal to the table's transpose (looked for only `by_value`: it reads both
    arrays, 2.5 GB each for GLM-9B). The table must feed only Gathers (axis 0) and that Transpose."""
    producer = {out: n for n in g.node for out in n.output}
    tables = _gather_tables(g, inits)
    for node in g.node:
        if node.op_type != "MatMul" or node.name in skip:
            continue
        weight = node.input[1]
        source = producer.get(weight)
        if source is not None and source.op_type == "Transpose" and source.input[0] in tables:
            perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), [1, 0])
            name = source.input[0]
            if perm == [1, 0] and len(readers[weight]) == 1 and _only_gathers(readers[name], name, source):
                return name, tables[name], node, source
        elif by_value and weight in inits and len(readers[weight]) == 1 and len(inits[weight].dims) == 2:
            w = inits[weight]
            for name, table in tables.items():
                if tuple(table.dims) == (w.dims[1], w.dims[0]) and _only_gathers(readers[name], name, None):
                    if is_shape_only(w) or is_shape_only(table):
                        continue  # equal only if the values are: unknowable, so kept untied
                    if np.array_equal(numpy_helper.to_array(w), numpy_helper.to_array(table).T):
                        return name, table, node, None
    return None


def _only_gathers(nodes, table: str, transpose) -> bool:
    return all((n.op_type == "Gather" and n.input[0] == table) or n is transpose for n in nodes)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {x for node in model.graph.node for x in node.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
