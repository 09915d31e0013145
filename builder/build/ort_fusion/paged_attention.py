"""Our paged attention (builder/export/paged_decoder.py) → ORT's GroupQueryAttention.

The exported graph reads each layer's past K/V with a Gather of whole pool blocks and attends over
[past ; new] with a mask built from `past_lens` and a causal mask over the new tokens. GQA
(com.microsoft) does exactly that when handed the gathered past in BNSH layout with
`seqlens_k = past_lens + S - 1` (every sequence's new tokens are right-padded to S; the padded rows
sit after the valid ones, so no valid row sees them, as in the exported graph) and
`total_sequence_length = max(past_lens) + S`. GQA treats a past buffer at least that long as a
static cache, reading each sequence's first past_lens positions: the block tables cover the new
tokens' blocks too (runtime/paged_decoder.py), so the gathered buffer always is.

Rotary: where onnxscript's rotary fusion recognised `x·cos + rotate_half(x)·sin` (its intermediate
`ai.onnxruntime._fusion.RotaryEmbedding` over [B, H, S, D]) or rotary.py GLM's interleaved partial
rotary (com.microsoft.RotaryEmbedding over [B, H, S, D]), q and k are rotated by
com.microsoft.RotaryEmbedding on the projections' [B, S, H·D] outputs directly, over the graph's own
per-token cos/sin (rotary.py). Otherwise q and k keep their own rotary nodes and are reshaped for GQA.

ORT's CPU GQA rejects batch > 1 with several new tokens and a non-empty past (prefix reuse during a
batched prefill); the engine says so in its metadata (runtime/engines/onnxruntime.py), and the runtime runs such batches one
sequence at a time.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import _ir_utils, pattern

from builder.build.ort_fusion.rotary import FUSION_DOMAIN, rotary_cache

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
        q3, k3, v3 = (self._tokens_major(op, x, h) for x, h in ((q, num_heads), (k, kv_heads), (v, kv_heads)))
        seq = op.Shape(self.input_ids, start=1, end=2)
        totals = op.Add(self.past_lens, seq)  # [B]
        seqlens_k = op.Cast(op.Sub(totals, op.Constant(value_ints=[1])), to=ir.DataType.INT32)
        total = op.Cast(op.ReduceMax(totals, keepdims=0), to=ir.DataType.INT32)
        attention = op.GroupQueryAttention(
            q3, k3, v3, k_past, v_past, seqlens_k, total,
            num_heads=num_heads, kv_num_heads=kv_heads,
            scale=_ir_utils.get_singleton_value(scale),
            _domain="com.microsoft", _outputs=3,
        )[0]  # fmt: skip
        # [B, S, 2·KVH·D]: new_kv.py turns the layers' pieces into new_kv with one Concat
        layer_kv = op.Concat(k3, v3, axis=-1, _outputs=["layer_kv_bsd"])
        return attention, op.Transpose(
            op.Reshape(layer_kv, op.Constant(value_ints=[0, 0, 2, kv_heads, head_dim])), perm=[2, 0, 1, 3, 4]
        )

    def _tokens_major(self, op, x, heads: int):
        """[B, H, S, D] → [B, S, H·D], looking through the exporter's own Reshape/Transpose and a
        rotary over the heads (redone by ORT's RotaryEmbedding on the [B, S, H·D] tensor)."""
        rotary = x.producer()
        if rotary is None or rotary.op_type != "RotaryEmbedding":
            rotary, source = None, _split_heads_source(rotary)
        else:
            source = _split_heads_source(rotary.inputs[0].producer())
        if source is None:  # some other head layout (or rotary over one): transpose it back
            return op.Reshape(op.Transpose(x, perm=BHSD_TO_BSHD), op.Constant(value_ints=[0, 0, -1]))
        if rotary is None:
            return source
        if rotary.domain == FUSION_DOMAIN:  # onnxscript's (x, cos, sin), Llama's halves
            inputs, attributes = rotary_cache(op, self.input_ids, *rotary.inputs[1:3], interleaved=False), {}
        else:  # ORT's already (rotary.py)
            inputs = rotary.inputs[1:]
            attributes = {name: attr.value for name, attr in rotary.attributes.items()}
        return op.RotaryEmbedding(
            source, *inputs, **(attributes | {"num_heads": heads}), _domain="com.microsoft"
        )


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
