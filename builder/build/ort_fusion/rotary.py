"""Rotary embeddings → com.microsoft.RotaryEmbedding, over the graph's own per-token cos/sin.

ORT's op indexes a cos/sin cache [positions, R/2] by `position_ids`. The exported graph computes
cos/sin per token ([B, S, R], any position scheme: GLM-4V's 3-D multimodal positions too), so the
cache here is those rows, [B·S, R/2], indexed by each token's row number.

GLM's rotary (interleaved pairs over the first `rotary_dim` of each head) is matched here.

GLM-4 (transformers' `glm4v.apply_rotary_pos_emb`) rotates x[..., :r] with `rotate_half_llm`
(pairs (2i, 2i+1)) against cos/sin repeated per pair, and passes x[..., r:] through:

    x_rot, x_pass = x[..., :r], x[..., r:]
    rotated = stack((-x_rot[..., 1::2], x_rot[..., 0::2]), -1).flatten(-2)
    out = cat(x_rot·cos + rotated·sin, x_pass)

which is ORT's interleaved rotary on the first r dims. onnxscript's rotary rule matches the
Llama-style `rotate_half` (halves) only.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import _ir_utils, pattern

FUSION_DOMAIN = "ai.onnxruntime._fusion"  # onnxscript's intermediate ops
INT64_MAX = 9223372036854775807


def rotary_cache(op, input_ids: ir.Value, cos: ir.Value, sin: ir.Value, interleaved: bool):
    """cos/sin [..., R] per token → caches [B·S, R/2] and row indices [B, S]. Llama's halves
    repeat (c0…c{R/2-1}, c0…): the first half; GLM's pairs (c0, c0, c1, c1, …): every other."""
    half = cos.shape[-1] // 2
    rows = op.Constant(value_ints=[-1, half])
    start, end, step = (0, 2 * half, 2) if interleaved else (0, half, 1)
    bounds = [op.Constant(value_ints=[v]) for v in (start, end, -1, step)]
    cos_cache = op.Reshape(op.Slice(cos, *bounds), rows)
    sin_cache = op.Reshape(op.Slice(sin, *bounds), rows)
    count = op.Size(input_ids)
    positions = op.Reshape(
        op.Range(op.Constant(value_int=0), count, op.Constant(value_int=1)), op.Shape(input_ids)
    )
    return positions, cos_cache, sin_cache


def same_rotary(a: ir.Node | None, b: ir.Node | None) -> bool:
    """Two rotary nodes that rotate by the same positions, caches and attributes (any head count)."""
    if a is None or b is None or a.domain != b.domain or list(a.inputs[1:]) != list(b.inputs[1:]):
        return False
    settings = [{n: x.value for n, x in node.attributes.items() if n != "num_heads"} for node in (a, b)]
    return settings[0] == settings[1]


class InterleavedPartialRotary(pattern.RewriteRuleClassBase):
    def __init__(self, input_ids: ir.Value) -> None:
        super().__init__("InterleavedPartialRotary")
        self.input_ids = input_ids

    def pattern(self, op, x, cos, sin, zero, rot_end, end, axis, one, two, last, shape):
        x_rot = op.Slice(x, zero, rot_end, axis, one)
        x_pass = op.Slice(x, rot_end, end, axis, one)
        even = op.Slice(x_rot, zero, end, axis, two)
        odd = op.Slice(x_rot, one, end, axis, two)
        pairs = op.Concat(op.Unsqueeze(op.Neg(odd), last), op.Unsqueeze(even, last), axis=-1)
        rotated = op.Reshape(pairs, shape)
        return op.Concat(op.Add(op.Mul(x_rot, cos), op.Mul(rotated, sin)), x_pass, axis=-1)

    def check(self, context, x, zero, rot_end, end, axis, one, two, last, **_):
        result = pattern.MatchResult()
        expected = {zero: 0, end: INT64_MAX, axis: 3, one: 1, two: 2, last: -1}
        if any(_ir_utils.get_singleton_value(value) != want for value, want in expected.items()):
            return result.fail("slices are not x[..., :r], x[..., r:] and the even/odd pairs")
        rotary_dim = _ir_utils.get_singleton_value(rot_end)
        if x.shape is None or x.shape.rank() != 4 or not isinstance(rotary_dim, int):
            return result.fail("not a [B, H, S, D] input with a constant rotary width")
        if not isinstance(x.shape[1], int) or rotary_dim % 2:
            return result.fail("head count unknown or odd rotary width")
        return result

    def rewrite(self, op, x, cos, sin, rot_end, **_):
        return op.RotaryEmbedding(
            x, *rotary_cache(op, self.input_ids, cos, sin, interleaved=True),
            interleaved=1, rotary_embedding_dim=_ir_utils.get_singleton_value(rot_end), num_heads=x.shape[1],
            _domain="com.microsoft",
        )  # fmt: skip
