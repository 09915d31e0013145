"""The exported graph: dynamic batch 1–8, paged KV, and agreement with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from builder.export.paged_decoder import PagedDecoder
from builder.export.text_decoder import ATOL, RTOL, decoder_feeds, torch_args
from builder.model_dir import open_model_dir
from runtime import decoder_io as io
from runtime.manifest import Manifest


def work_dir(engines):
    return engines.parent.parent / "build" / engines.name


def test_export_validation_report_covers_batch_1_and_8(built):
    _, engines = built
    report = json.loads((work_dir(engines) / "text_decoder.fp32.validation.json").read_text())
    assert report["passed"]
    cases = {check["case"] for check in report["checks"]}
    for batch in (1, 8):
        assert any(c.startswith(f"prefill b{batch} ") for c in cases)
        assert any(c.startswith(f"decode b{batch} ") for c in cases)
        assert any(c.startswith(f"prefill b{batch} ") and c.endswith("vs HF") for c in cases)
    assert all(
        check["max_abs_diff"] <= check["atol"] + check["rtol"] * check["ref_max_abs"]
        for check in report["checks"]
    )


def test_graph_has_dynamic_batch_and_plain_onnx_ops(built):
    _, engines = built
    graph = onnx.load(str(work_dir(engines) / "text_decoder.fp32.onnx"))
    onnx.checker.check_model(graph)
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input
    }
    assert dims[io.INPUT_IDS] == ["batch", "seq"]
    assert dims[io.BLOCK_TABLES] == ["batch", "blocks"]
    assert dims["key_cache.0"][0] == "pool_blocks"
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}, "no contrib ops in the exported graph"
    assert Manifest.load(engines).axes["batch"] == [1, 8]


@pytest.mark.parametrize("batch,seq,past", [(3, 5, 21), (8, 1, 40), (1, 33, 0)])
def test_onnx_matches_pytorch_on_fresh_inputs(built, batch, seq, past):
    """Independent of the build's own check: other shapes, other random K/V."""
    model_dir, engines = built
    model = open_model_dir(model_dir).load()
    manifest = Manifest.load(engines)
    media = bool(manifest.encoders)  # decoders of models with encoders take media rows
    decoder = PagedDecoder(model, open_model_dir(model_dir).family, media=media).eval()
    block_size = manifest.decoder["block_size"]
    feeds = decoder_feeds(decoder, batch, seq, past, block_size, seed=777)
    session = ort.InferenceSession(str(work_dir(engines) / "text_decoder.fp32.onnx"))
    logits, new_kv = session.run(list(io.OUTPUTS), feeds)
    with torch.no_grad():
        ref_logits, ref_kv = (t.numpy() for t in decoder(*torch_args(decoder, feeds)))
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL + RTOL * np.abs(ref_logits).max(), rtol=0)
    np.testing.assert_allclose(new_kv, ref_kv, atol=ATOL + RTOL * np.abs(ref_kv).max(), rtol=0)


def test_fp16_graph_keeps_fragile_maths_fp32(built):
    _, engines = built
    graph = onnx.load(str(work_dir(engines) / "text_decoder.fp16.onnx"))
    onnx.checker.check_model(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.graph.input, *graph.graph.output]}
    assert types["key_cache.0"] == onnx.TensorProto.FLOAT16
    assert types[io.NEW_KV] == onnx.TensorProto.FLOAT16
    assert types[io.LOGITS] == onnx.TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(graph)
    elem = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for node in graph.graph.node:
        if node.op_type in ("Softmax", "Cos", "Sin", "ReduceMean"):
            assert elem.get(node.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, node.name
