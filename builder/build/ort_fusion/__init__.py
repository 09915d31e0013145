"""Rewrite a portable decoder graph into ONNX Runtime's fused operators (the ORT engine step only).

The precision graphs stay plain ONNX for TensorRT, which fuses layers itself; ORT's own optimizer
cannot see the dynamo exporter's patterns, so its engine step fuses its copy here:

- onnxscript's ort_fusions: RMSNorm → SimplifiedLayerNormalization, residual add + RMSNorm →
  SkipSimplifiedLayerNormalization, `x·cos + rotate_half(x)·sin` → (intermediate) rotary;
- ours (rotary.py): GLM's interleaved partial rotary → (intermediate) rotary; (paged_attention.py): the paged-KV attention → GroupQueryAttention over packed q/k/v,
  rotating them itself; new_kv.py: the `new_kv` output, every layer's K rotated, in a few nodes;
  kv_slots.py: each layer's past an input that GQA updates in place;
  matmul_nbits.py: block-quantised weights → MatMulNBits / GatherBlockQuantized, with the
  projections that read one input packed into one MatMulNBits; packed_projections.py: float
  q/k/v read packed → one MatMul;
- ORT's optimizer afterwards (SiLU → QuickGelu, …), at save time in onnxruntime_engine.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.optimizer import optimize
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import shape_optimization
from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_rotary_embedding
from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

from builder.build.ort_fusion.kv_slots import fuse_kv_slots
from builder.build.ort_fusion.matmul_nbits import fuse_matmul_nbits
from builder.build.ort_fusion.new_kv import fuse_new_kv
from builder.build.ort_fusion.packed_projections import pack_float_projections
from builder.build.ort_fusion.paged_attention import PagedAttentionToGQA
from builder.build.ort_fusion.rotary import InterleavedPartialRotary
from runtime import decoder_io as io
from runtime.engines.onnxruntime import BATCHED_PREFILL, BATCHED_PREFILL_WITH_PAST


@dataclass
class FusionReport:
    counts: dict[str, int] = field(default_factory=dict)  # fusion → times applied
    source: dict[str, str] = field(default_factory=dict)  # fusion → "onnxscript" or "autoglm-trt"


def _pre_optimize(model: ir.Model) -> None:
    """Constant-fold the exporter's shape arithmetic so patterns see one node per tensor op."""
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)


def _token_stand_in(model: ir.Model, hidden_in: ir.Value | None) -> ir.Value | None:
    """A later pipeline stage has no input_ids, whose [B, S] shape the fused operators' inputs are
    computed from: zeros of hidden_in's first two axes stand in (B·S int64s, per call)."""
    if hidden_in is None:
        return None
    shape = ir.node("Shape", [hidden_in], attributes={"start": 0, "end": 2}, name="tokens/shape")
    zeros = ir.node("ConstantOfShape", [shape.outputs[0]], name="tokens/zeros",
                    attributes={"value": ir.tensor(np.zeros(1, np.int64))})  # fmt: skip
    model.graph.insert_before(model.graph[0], [shape, zeros])
    return zeros.outputs[0]


def fuse_decoder(model: ir.Model) -> FusionReport:
    """Fuse a text decoder graph in place (fp32, int8 or int4 activations in fp32)."""
    report = FusionReport()

    def record(name: str, count: int, source: str) -> None:
        report.counts[name] = count
        report.source[name] = source

    _pre_optimize(model)
    record("SimplifiedLayerNormalization", fuse_rms_normalization(model), "onnxscript")
    record("SkipSimplifiedLayerNormalization", fuse_skip_rms_normalization(model), "onnxscript")
    record("rotary (x·cos + rotate_half(x)·sin)", fuse_rotary_embedding(model), "onnxscript")
    inputs = {value.name: value for value in model.graph.inputs}
    tokens = inputs.get(io.INPUT_IDS) or _token_stand_in(model, inputs.get(io.HIDDEN_IN))
    if tokens is not None and io.PAST_LENS in inputs:
        glm_rotary = pattern.RewriteRuleSet([InterleavedPartialRotary.rule(tokens)])
        record(
            "rotary, interleaved partial (GLM) → RotaryEmbedding",
            glm_rotary.apply_to_model(model),
            "autoglm-trt",
        )
        common_passes.CommonSubexpressionEliminationPass()(model)  # q and k rotate by the same caches
        rule = PagedAttentionToGQA.rule(tokens, inputs[io.PAST_LENS])
        fused = pattern.RewriteRuleSet([rule]).apply_to_model(model)
        record("GroupQueryAttention (paged)", fused, "autoglm-trt")
        rotating = sum(
            1
            for n in model.graph
            if n.op_type == "GroupQueryAttention" and n.attributes.get_int("do_rotary", 0)
        )
        record("  of which read packed q/k/v and rotate them", rotating, "autoglm-trt")
        if fused:  # ORT's CPU GQA: see paged_attention.py
            model.metadata_props[BATCHED_PREFILL_WITH_PAST] = "false"
        if rotating:
            model.metadata_props[BATCHED_PREFILL] = "false"
        common_passes.CommonSubexpressionEliminationPass()(model)  # one copy of the shared GQA inputs
        record("new_kv in one Concat", fuse_new_kv(model), "autoglm-trt")
        record("past in per-sequence slots, updated in place", fuse_kv_slots(model), "autoglm-trt")
    for name, count in fuse_matmul_nbits(model).items():
        record(name, count, "autoglm-trt")
    common_passes.RemoveUnusedNodesPass()(model)  # the replaced attention's q/k/v reshapes
    record("float q/k/v packed into one MatMul", pack_float_projections(model), "autoglm-trt")
    common_passes.CommonSubexpressionEliminationPass()(model)
    optimize(model)  # inlines unused intermediate fusions, drops dead nodes
    common_passes.TopologicalSortPass()(model)  # rules insert shared nodes where they matched
    return report
