"""Quantised weights → ORT's MatMulNBits and GatherBlockQuantized, q/k/v and gate/up packed.

The portable graphs hold weights as `DequantizeLinear(Wq, scale)` on a constant (weight-only int8
per channel or int4 per block, calibration/weight_only.py; W8A8's weights likewise, behind a Q/DQ
pair on the activation). ORT's CPU kernels for those are MatMulNBits (B: uint8 [N, K/bs, bs·bits/8],
zero point 2^(bits−1) implied, one scale per block of K) and, for the embedding rows,
GatherBlockQuantized over the same bytes. Per-channel int8 scales are repeated into blocks, which is
exact. A W8A8 MatMul's activation Q/DQ is dropped: MatMulNBits quantises its input itself
(`accuracy_level` 4: int8 per block, dynamically) — measured faster here than ORT's static
QLinear path, and no less accurate (README, INT8).

Rules are onnxscript patterns (a target, a check, a replacement); the packing of projections that
read one tensor is a pass over the rewritten nodes.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from builder.build.ort_fusion.graph_edit import constant, initializer, take_over

INT8_BLOCK = 128  # per-channel int8 scales are repeated over blocks of this many K values
DEFAULT_ACCURACY_LEVEL = 4  # int8 compute over the dequantised blocks (0: float compute)


def _dequantised(dq: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(q, per-element scale) of a DequantizeLinear on constants with zero point 0, else None."""
    q_value, scale_value = dq.inputs[0], dq.inputs[1]
    if q_value.const_value is None or scale_value.const_value is None:
        return None
    if len(dq.inputs) > 2 and dq.inputs[2] is not None:
        zero = dq.inputs[2].const_value
        if zero is None or np.any(zero.numpy().astype(np.int64)):
            return None
    q = q_value.const_value.numpy().astype(np.int64)  # int4 arrives as ml_dtypes int4
    scale = scale_value.const_value.numpy().astype(np.float32)
    if q.ndim != 2 or scale.ndim not in (0, 1, 2):
        return None
    axis = dq.attributes.get_int("axis", 1) % 2
    block = dq.attributes.get_int("block_size", 0)
    if scale.ndim == 0:
        full = np.full(q.shape, scale, np.float32)
    elif block:
        full = np.repeat(scale, block, axis=axis)[: q.shape[0], : q.shape[1]]
    else:
        full = np.expand_dims(scale, 1 - axis) * np.ones(q.shape, np.float32)
    return q, np.ascontiguousarray(full)


def _bits_of(q_value: ir.Value) -> int:
    return 4 if q_value.dtype in (ir.DataType.INT4, ir.DataType.UINT4) else 8


def _block_of(dq: ir.Node) -> int:
    return dq.attributes.get_int("block_size", 0) or INT8_BLOCK


def nbits_tensors(
    q_nk: np.ndarray, scale_nk: np.ndarray, bits: int, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' B [N, blocks, bs·bits/8] uint8 and scales [N, blocks] from q, scale [N, K]
    (scale constant within each block). Padding past K is zero (stored as the zero point)."""
    n, k = q_nk.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), np.int64)
    padded[:, :k] = q_nk
    stored = (padded + (1 << (bits - 1))).astype(np.uint8)
    if bits == 4:
        stored = stored[:, 0::2] | (stored[:, 1::2] << 4)
    scale_blocks = np.ones((n, blocks * block), np.float32)
    scale_blocks[:, :k] = scale_nk
    scales = scale_blocks[:, ::block]
    if not np.array_equal(np.repeat(scales, block, axis=1)[:, :k], scale_nk):
        raise ValueError(f"scales vary within a block of {block}")
    return stored.reshape(n, blocks, -1), np.ascontiguousarray(scales)


class NBitsWeights:
    """MatMulNBits-layout initializers made once per quantised weight and orientation, so the tied
    lm_head and the embedding Gather read the same bytes."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, bool], tuple[ir.Value, ir.Value, tuple[int, int, int, int]]] = {}

    def get(self, op, dq: ir.Node, rows_are_n: bool):
        """(B, flat scales, (N, K, bits, block)) for DQ's weight; `rows_are_n`: its rows are the
        N outputs (a table [V, H]), else its columns are (a MatMul weight [K, N])."""
        key = (dq.inputs[0].name, rows_are_n)
        if key not in self._made:
            q, scale = _dequantised(dq)
            if not rows_are_n:
                q, scale = q.T, scale.T
            bits, block = _bits_of(dq.inputs[0]), _block_of(dq)
            b, scales = nbits_tensors(q, scale, bits, block)
            name = f"{dq.inputs[0].name}{'' if rows_are_n else '_T'}_nbits"
            self._made[key] = (
                op.initializer(ir.tensor(b, name=name), name=name),
                op.initializer(ir.tensor(scales.reshape(-1), name=f"{name}_scales"), name=f"{name}_scales"),
                (q.shape[0], q.shape[1], bits, block),
            )
        return self._made[key]


class _ToMatMulNBits(pattern.RewriteRuleClassBase):
    """Shared rewrite: MatMul(x, W) with W = DQ(Wq) [K, N], or Transpose(DQ(Wq [N, K]))."""

    transposed = False

    def __init__(self, name: str, weights: NBitsWeights, accuracy_level: int) -> None:
        super().__init__(name, remove_nodes=False)  # a DQ may feed an embedding Gather too
        self.weights = weights
        self.accuracy_level = accuracy_level

    def check(self, context, x, dq_out, **_):
        result = pattern.MatchResult()
        dq = dq_out.producer()
        if x.dtype != ir.DataType.FLOAT or _dequantised(dq) is None:
            return result.fail("not a float MatMul over a constant zero-point-0 DequantizeLinear")
        return result

    def rewrite(self, op, x, dq_out, **_):
        b, scales, (n, k, bits, block) = self.weights.get(op, dq_out.producer(), rows_are_n=self.transposed)
        return op.MatMulNBits(
            x, b, scales, K=k, N=n, bits=bits, block_size=block, accuracy_level=self.accuracy_level,
            _domain="com.microsoft",
        )  # fmt: skip


class WeightOnlyMatMul(_ToMatMulNBits):
    def pattern(self, op, x, q, scale):
        return op.MatMul(x, op.DequantizeLinear(q, scale, _allow_other_inputs=True, _outputs=["dq_out"]))


class ActivationQDQMatMul(_ToMatMulNBits):
    def pattern(self, op, x, a_scale, a_zero, q, scale):
        activation = op.DequantizeLinear(op.QuantizeLinear(x, a_scale, a_zero), a_scale, a_zero)
        return op.MatMul(
            activation, op.DequantizeLinear(q, scale, _allow_other_inputs=True, _outputs=["dq_out"])
        )


class TransposedWeightMatMul(_ToMatMulNBits):
    """The tied lm_head: MatMul(x, Transpose(DQ(T [V, H]))) reads T's rows as its N outputs."""

    transposed = True

    def pattern(self, op, x, q, scale):
        dq = op.DequantizeLinear(q, scale, _allow_other_inputs=True, _outputs=["dq_out"])
        return op.MatMul(x, op.Transpose(dq, perm=[1, 0]))


class QuantisedGather(pattern.RewriteRuleClassBase):
    """Embedding rows: Gather(DQ(T [V, H]), ids) → GatherBlockQuantized over MatMulNBits' bytes
    (the same initializer when the lm_head shares T; ORT folds the scale Reshape at load)."""

    def __init__(self, weights: NBitsWeights) -> None:
        super().__init__("QuantisedGather", remove_nodes=False)
        self.weights = weights

    def pattern(self, op, q, scale, ids):
        dq = op.DequantizeLinear(q, scale, _allow_other_inputs=True, _outputs=["dq_out"])
        return op.Gather(dq, ids, axis=0)

    def check(self, context, dq_out, **_):
        result = pattern.MatchResult()
        dq = dq_out.producer()
        if _dequantised(dq) is None or _block_of(dq) < 16:
            return result.fail("not a constant zero-point-0 table")
        return result

    def rewrite(self, op, dq_out, ids, **_):
        data, scales, (rows, width, bits, block) = self.weights.get(op, dq_out.producer(), rows_are_n=True)
        blocks = -(-width // block)
        block_scales = op.Reshape(scales, op.Constant(value_ints=[rows, blocks, 1]))
        gathered = op.GatherBlockQuantized(
            data,
            ids,
            block_scales,
            bits=bits,
            block_size=block,
            quantize_axis=2,
            gather_axis=0,
            _domain="com.microsoft",
        )  # [.., blocks, bs] fmt: skip
        flat = op.Reshape(gathered, op.Constant(value_ints=[0, 0, -1]))
        if blocks * block == width:
            return flat
        return op.Slice(
            flat, op.Constant(value_ints=[0]), op.Constant(value_ints=[width]), op.Constant(value_ints=[-1])
        )


def fold_biases(model: ir.Model) -> int:
    """MatMulNBits → Add(constant [N]) (GLM's q/k/v biases) → MatMulNBits with its `bias` input."""
    graph, folded = model.graph, 0
    for node in list(graph):
        if node.op_type != "MatMulNBits" or len(node.inputs) > 3:
            continue
        uses = list(node.outputs[0].uses())
        add = uses[0].node if len(uses) == 1 else None
        if add is None or add.op_type != "Add":
            continue
        bias = add.inputs[1 - uses[0].idx]
        n = node.attributes.get_int("N")
        if (
            bias.const_value is None
            or bias.const_value.numpy().shape != (n,)
            or bias.dtype != ir.DataType.FLOAT
        ):
            continue
        with_bias = ir.node("MatMulNBits", [*node.inputs, None, None, bias], attributes={k: a.value for k, a in node.attributes.items()},
                            domain="com.microsoft", name=f"{node.name}/bias")  # fmt: skip
        graph.insert_before(add, [with_bias])
        take_over(add.outputs[0], with_bias.outputs[0])
        graph.remove([add, node], safe=True)
        folded += 1
    return folded


def pack_shared_inputs(model: ir.Model) -> int:
    """MatMulNBits nodes reading one tensor with the same bits, block and K (q/k/v; gate/up) →
    one MatMulNBits over the concatenated rows (and biases) and a Split. Returns the nodes saved."""
    graph = model.graph
    groups: dict[tuple, list[ir.Node]] = defaultdict(list)
    for node in graph:
        if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
            a = node.attributes
            bias = node.inputs[5] if len(node.inputs) > 5 else None
            key = (id(node.inputs[0]), a.get_int("bits"), a.get_int("block_size"), a.get_int("K"),
                   a.get_int("accuracy_level", 0), bias is not None)  # fmt: skip
            constants = [node.inputs[1], node.inputs[2], *([bias] if bias is not None else [])]
            plain = all(v is None for v in node.inputs[3:5])  # no zero points, no g_idx
            if plain and all(v.const_value is not None and len(list(v.uses())) == 1 for v in constants):
                groups[key].append(node)
    saved = 0
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        first, base = nodes[0], f"{nodes[0].inputs[1].name}_packed"
        inputs = [first.inputs[0]]
        for index, suffix in ((1, ""), (2, "_scales"), (5, "_bias")):
            if index < len(first.inputs) and first.inputs[index] is not None:
                joined = np.concatenate([n.inputs[index].const_value.numpy() for n in nodes])  # N-major
                inputs += [None] * (index - len(inputs)) + [initializer(graph, f"{base}{suffix}", joined)]
        sizes = [n.attributes.get_int("N") for n in nodes]
        attributes = {name: attr.value for name, attr in first.attributes.items()} | {"N": sum(sizes)}
        packed = ir.node(
            "MatMulNBits", inputs, attributes=attributes, domain="com.microsoft", name=f"{first.name}/packed"
        )
        split = ir.node("Split", [packed.outputs[0], constant(graph, f"{base}_split", sizes)], attributes={"axis": -1},
                        num_outputs=len(nodes), name=f"{first.name}/split")  # fmt: skip
        graph.insert_before(first, [packed, split])
        for node, out in zip(nodes, split.outputs, strict=True):
            take_over(node.outputs[0], out)
            graph.remove(node, safe=True)
        saved += len(nodes) - 2
    return saved


def drop_split_concat(model: ir.Model) -> int:
    """Concat(Split(x)'s outputs, in order, on the Split's axis) → x: GroupQueryAttention's packed
    q/k/v (paged_attention.py) over the projections packed above. Returns the Concats dropped."""
    graph, dropped = model.graph, 0
    for concat in list(graph):
        split = concat.inputs[0].producer() if concat.op_type == "Concat" and concat.inputs else None
        if split is None or split.op_type != "Split" or list(concat.inputs) != list(split.outputs):
            continue
        if concat.attributes.get_int("axis") != split.attributes.get_int("axis", 0):
            continue
        take_over(concat.outputs[0], split.inputs[0])
        graph.remove(concat, safe=True)
        if not any(out.uses() or out.is_graph_output() for out in split.outputs):
            graph.remove(split, safe=True)
        dropped += 1
    return dropped


def fuse_matmul_nbits(model: ir.Model, accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> dict[str, int]:
    weights = NBitsWeights()
    rules = pattern.RewriteRuleSet(
        [
            ActivationQDQMatMul.rule("W8A8 MatMul → MatMulNBits", weights, accuracy_level),
            WeightOnlyMatMul.rule("weight-only MatMul → MatMulNBits", weights, accuracy_level),
            TransposedWeightMatMul.rule("tied lm_head → MatMulNBits", weights, accuracy_level),
            QuantisedGather.rule(weights),
        ]
    )
    counts = {"MatMulNBits / GatherBlockQuantized": rules.apply_to_model(model)}
    if counts["MatMulNBits / GatherBlockQuantized"]:
        counts["biases folded into MatMulNBits"] = fold_biases(model)
        counts["packed projections (nodes saved)"] = pack_shared_inputs(model)
        counts["packed q/k/v read by GroupQueryAttention as packed"] = drop_split_concat(model)
    return counts
