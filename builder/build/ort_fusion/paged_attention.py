"""Our paged attention (builder/export/paged_decoder.py) → ORT's GroupQueryAttention.

The exported graph reads each layer's past K/V with a Gather of whole pool blocks and attends over
[past ; new] with a mask built from `past_lens` and a causal mask over the new tokens. GQA
(com.microsoft) does exactly that when handed the gathered past in BNSH layout with
`seqlens_k = past_lens + S - 1` (every sequence's new tokens are right-padded to S; the padded rows
sit after the valid ones, so no valid row sees them, as in the exported graph) and
`total_sequence_length = max(past_lens) + S`. GQA treats a past buffer at least that long as a
static cache, reading each sequence's first past_lens positions: the block tables cover the new
tokens' blocks too (runtime/paged_decoder.py), so the gathered buffer always is. kv_slots.py then
replaces the gathered past with per-sequence slots of max_seq_len tokens, updated in place.

Rotary: where onnxscript's rotary fusion recognised `x·cos + rotate_half(x)·sin` (its intermediate
`ai.onnxruntime._fusion.RotaryEmbedding` over [B, H, S, D]) or rotary.py GLM's interleaved partial
rotary (com.microsoft.RotaryEmbedding over [B, H, S, D]) on q and k alike, GQA takes q/k/v packed
[B, S, (H + 2·KVH)·D] and rotates q and k itself (`do_rotary`), over the graph's own per-token
cos/sin (rotary.py) indexed by its `position_ids` input; it wants cos/sin caches of at least
total_sequence_length rows and a multiple of 8 frequencies, so the caches are zero-padded and a
narrower rotary keeps the path below. The pool needs K rotated too: new_kv.py rotates every layer's
at once. Otherwise q and k keep their own rotary (com.microsoft.RotaryEmbedding on the [B, S, H·D]
projections) and are reshaped for GQA.

ORT's CPU GQA rejects batch > 1 with several new tokens and a non-empty past (prefix reuse during a
batched prefill); and when it rotates q/k itself, a first prompt of several sequences is rotated by
the first sequence's `position_ids` alone (ORT 1.31, measured: the others' outputs differ; one
sequence, or one new token each, is exact). The engine says which in its metadata
(runtime/engines/onnxruntime.py), and the runtime runs such batches one sequence at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnxscript.rewriter import _ir_utils, pattern

from builder.build.ort_fusion.rotary import FUSION_DOMAIN, rotary_cache, same_rotary

BHSD_TO_BSHD = [0, 2, 1, 3]


class PagedAttentionToGQA(pattern.RewriteRuleClassBase):
    def __init__(self, input_ids: ir.Value, past_lens: ir.Value) -> None:
        super().__init__("PagedAttentionToGQA")
        self.input_ids = input_ids
        self.past_lens = past_lens

    def pattern(self, op, q, k, v, key_cache, value_cache, blocks, past_shape, mask, scale, unsqueeze_axis):
        # q: [B, H, S, D]; k, v: [B, KVH, S, D]; caches: [NB, bs, KVH, D]
        # past: Gather [B·M, bs, KVH, D] → Reshape [B, P = M·bs, KVH, D] → Transpose [B, KVH, P, D]
        k_past = op.Transpose(op.Reshape(op.Gather(key_cache, blocks, axis=0), past_shape), perm=BHSD_TO_BSHD)
        v_past = op.Transpose(
            op.Reshape(op.Gather(value_cache, blocks, axis=0), past_shape), perm=BHSD_TO_BSHD
        )
        k_all = op.Concat(k_past, k, axis=2)  # [B, KVH, P + S, D]
        v_all = op.Concat(v_past, v, axis=2)
        q_groups = op.Reshape(q, pattern.ANY_VALUE)  # [B, KVH, G·S, D]
        scores = op.Mul(op.MatMul(q_groups, op.Transpose(k_all, perm=[0, 1, 3, 2])), scale)
        scores = op.Reshape(scores, pattern.ANY_VALUE)  # [B, KVH, G, S, T]
        masked = op.Where(mask, pattern.ANY_VALUE, scores)
        # fp16 graphs keep the softmax in fp32 (builder/precision.py): Cast in, Cast out
        probs = pattern.OrValue(
            [op.Cast(op.Softmax(op.Cast(masked, to=ir.DataType.FLOAT), axis=-1)), op.Softmax(masked, axis=-1)]
        )
        out = op.MatMul(op.Reshape(probs, pattern.ANY_VALUE), v_all)  # [B, KVH, G·S, D]
        out = op.Transpose(op.Reshape(out, pattern.ANY_VALUE), perm=[0, 3, 1, 2, 4])
        attention = op.Reshape(out, pattern.ANY_VALUE)  # [B, S, H·D]
        # This layer's new_kv slice: stack([k, v]).transpose(2, 3) → [2, B, S, KVH, D]
        stacked = op.Concat(op.Unsqueeze(k, unsqueeze_axis), op.Unsqueeze(v, unsqueeze_axis), axis=0)
        layer_kv = op.Transpose(stacked, perm=[0, 1, 3, 2, 4])
        return attention, layer_kv

    def check(self, context, q, k, v, key_cache, value_cache, scale, unsqueeze_axis, **_):
        """Structure only: the mask is taken to be the exporter's (past_lens and causal), which GQA
        reproduces; the engine step's comparison with the unfused graph (compare.py) is the proof."""
        result = pattern.MatchResult()
        graph_inputs = set(context.graph_or_function.inputs)
        if key_cache not in graph_inputs or value_cache not in graph_inputs:
            return result.fail("the K/V read is not a Gather from pool inputs")
        if _ir_utils.get_singleton_value(unsqueeze_axis) != 0:
            return result.fail("new_kv is not stacked on axis 0")
        if not isinstance(_ir_utils.get_singleton_value(scale), float):
            return result.fail("the attention scale is not a constant")
        dims = [_ir_utils.get_dim(q, 1), _ir_utils.get_dim(k, 1), _ir_utils.get_dim(q, 3)]
        if not all(isinstance(d, int) for d in dims) or dims[0] % dims[1]:
            return result.fail("head counts or head size are not static", [q, k])
        return result

    def rewrite(self, op, q, k, v, key_cache, value_cache, blocks, past_shape, scale, **_):
        num_heads, kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[3]
        k_past, v_past = (
            op.Transpose(op.Reshape(op.Gather(cache, blocks, axis=0), past_shape), perm=BHSD_TO_BSHD)
            for cache in (key_cache, value_cache)
        )
        (q3, q_rotary), (k3, k_rotary), (v3, v_rotary) = (self._tokens_major(x) for x in (q, k, v))
        seq = op.Shape(self.input_ids, start=1, end=2)
        totals = op.Add(self.past_lens, seq)  # [B]
        seqlens_k = op.Cast(op.Sub(totals, op.Constant(value_ints=[1])), to=ir.DataType.INT32)
        total = op.Cast(op.ReduceMax(totals, keepdims=0), to=ir.DataType.INT32)
        heads = {
            "num_heads": num_heads,
            "kv_num_heads": kv_heads,
            "scale": _ir_utils.get_singleton_value(scale),
        }
        rotary = self._gqa_rotary(op, (q3, k3, v3), (q_rotary, k_rotary, v_rotary), head_dim)
        if rotary is not None:
            # q/k/v packed (the projections' MatMulNBits pack to match, matmul_nbits.py), rotated by GQA
            qkv = op.Concat(q3, k3, v3, axis=-1, _outputs=["packed_qkv"])
            positions, cos, sin = rotary.inputs
            # GQA wants cache rows ≥ total_sequence_length; the per-token cache has B·S
            rows = op.Reshape(op.Cast(total, to=ir.DataType.INT64), op.Constant(value_ints=[1]))
            pads = op.Concat(op.Constant(value_ints=[0, 0]), rows, op.Constant(value_ints=[0]), axis=0)
            attention = op.GroupQueryAttention(
                qkv, None, None, k_past, v_past, seqlens_k, total, op.Pad(cos, pads), op.Pad(sin, pads), positions,
                **heads, do_rotary=1, rotary_interleaved=rotary.interleaved, _domain="com.microsoft", _outputs=3,
            )[0]  # fmt: skip
            # the pool's K is rotated too: new_kv.py rotates every layer's at once
            k_new = rotary.apply(
                op, op.Slice(qkv, *_head_bounds(op, num_heads, kv_heads, head_dim)), kv_heads
            )
            v_new = op.Slice(qkv, *_head_bounds(op, num_heads + kv_heads, kv_heads, head_dim))
        else:
            q3, k3, v3 = (self._head_major_input(op, *args) for args in (
                (q, q3, q_rotary, num_heads), (k, k3, k_rotary, kv_heads), (v, v3, v_rotary, kv_heads)))  # fmt: skip
            attention = op.GroupQueryAttention(
                q3, k3, v3, k_past, v_past, seqlens_k, total, **heads, _domain="com.microsoft", _outputs=3
            )[0]
            k_new, v_new = k3, v3
        # [B, S, 2·KVH·D]: new_kv.py turns the layers' pieces into new_kv with one Concat
        layer_kv = op.Concat(k_new, v_new, axis=-1, _outputs=["layer_kv_bsd"])
        return attention, op.Transpose(
            op.Reshape(layer_kv, op.Constant(value_ints=[0, 0, 2, kv_heads, head_dim])), perm=[2, 0, 1, 3, 4]
        )

    def _gqa_rotary(self, op, sources, rotaries, head_dim: int) -> Rotary | None:
        """The rotary GQA can apply itself: q and k rotated alike, v not, and (ORT's check) a
        multiple of 8 frequencies; else None."""
        q_rotary, k_rotary, v_rotary = rotaries
        if None in sources or v_rotary is not None or not same_rotary(q_rotary, k_rotary):
            return None
        width = q_rotary.attributes.get_int("rotary_embedding_dim", 0) or head_dim
        return self._rotary(op, q_rotary) if width % 16 == 0 else None

    def _tokens_major(self, x) -> tuple[ir.Value | None, ir.Node | None]:
        """[B, H, S, D] → ([B, S, H·D] source, its rotary node or None), looking through the
        exporter's own Reshape/Transpose and a rotary over the heads (redone on the source);
        source None: some other head layout."""
        rotary = x.producer()
        if rotary is None or rotary.op_type != "RotaryEmbedding":
            return _split_heads_source(rotary), None
        return _split_heads_source(rotary.inputs[0].producer()), rotary

    def _rotary(self, op, node: ir.Node) -> Rotary:
        if node.domain == FUSION_DOMAIN:  # onnxscript's (x, cos, sin), Llama's halves
            inputs = rotary_cache(op, self.input_ids, *node.inputs[1:3], interleaved=False)
            return Rotary(tuple(inputs), interleaved=0, dim=0)
        return Rotary(  # ORT's already (rotary.py)
            tuple(node.inputs[1:]),
            interleaved=node.attributes.get_int("interleaved", 0),
            dim=node.attributes.get_int("rotary_embedding_dim", 0),
        )

    def _head_major_input(self, op, x, source, rotary_node, heads: int) -> ir.Value:
        """GQA's [B, S, H·D] input for x: its source, rotated where x was."""
        if source is None:
            return op.Reshape(op.Transpose(x, perm=BHSD_TO_BSHD), op.Constant(value_ints=[0, 0, -1]))
        return source if rotary_node is None else self._rotary(op, rotary_node).apply(op, source, heads)


@dataclass(frozen=True)
class Rotary:
    """com.microsoft.RotaryEmbedding's inputs after x (position ids, cos cache, sin cache) and
    attributes; `dim` 0: the whole head."""

    inputs: tuple[ir.Value, ir.Value, ir.Value]
    interleaved: int
    dim: int

    def apply(self, op, x: ir.Value, heads: int) -> ir.Value:
        attributes = {"interleaved": self.interleaved, "num_heads": heads}
        if self.dim:
            attributes["rotary_embedding_dim"] = self.dim
        return op.RotaryEmbedding(x, *self.inputs, **attributes, _domain="com.microsoft")


def _head_bounds(op, first_head: int, heads: int, head_dim: int):
    """Slice inputs of heads [first_head, first_head + heads) of a [B, S, ·] tensor."""
    start, end = first_head * head_dim, (first_head + heads) * head_dim
    return op.Constant(value_ints=[start]), op.Constant(value_ints=[end]), op.Constant(value_ints=[-1])


def _split_heads_source(node: ir.Node | None) -> ir.Value | None:
    """x3 if `node` is Transpose(Reshape(x3 [B, S, H·D] → [B, S, H, D]), perm=[0, 2, 1, 3])."""
    if node is None or node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
        return None
    perm = node.attributes.get("perm")
    if perm is None or list(perm.as_ints()) != BHSD_TO_BSHD:
        return None
    reshape = node.inputs[0].producer()
    if reshape is None or reshape.op_type != "Reshape":
        return None
    source = reshape.inputs[0]
    if source.shape is None or source.shape.rank() != 3:
        return None
    return source
