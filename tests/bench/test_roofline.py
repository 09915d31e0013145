"""The roofline: bytes read per decoded token and the fraction of the bandwidth ceiling reached."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.bench.roofline import Bandwidth, kv_bytes_per_token, measure_bandwidth, roofline, weight_bytes
from runtime.paged_decoder import DecoderLimits


def test_kv_bytes_and_fraction_follow_the_formula():
    limits = DecoderLimits(num_layers=4, num_kv_heads=2, head_dim=8, vocab_size=100, position_rank=1,
                           max_batch=8, max_seq_len=256, block_size=16)  # fmt: skip
    kv = kv_bytes_per_token(limits, context=100, kv_itemsize=2)
    assert kv == 4 * 2 * 100 * 2 * 8 * 2
    out = roofline(
        Bandwidth(10.0, 64, 2, 3), weight_bytes=1_000_000, kv_bytes=kv, measured_tokens_per_s=2500.0
    )
    ceiling = 10e9 / (1_000_000 + kv)
    assert out["bytes_per_token"] == 1_000_000 + kv
    assert out["ceiling_tokens_per_s"] == pytest.approx(ceiling, rel=1e-3)
    assert out["fraction"] == pytest.approx(2500.0 / ceiling, rel=1e-3)


def test_bandwidth_is_measured():
    measured = measure_bandwidth(array_mb=16, threads=2, trials=2)
    assert measured.gb_per_s > 0 and measured.threads == 2


def test_weight_bytes_leave_out_gather_tables(tmp_path):
    table = numpy_helper.from_array(np.zeros((50, 8), np.float32), "embed")  # read one row per token
    matmul = numpy_helper.from_array(np.zeros((8, 50), np.float16), "head")  # read in full
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embed", "ids"], ["x"]),
            helper.make_node("MatMul", ["x", "head"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 50])],
        initializer=[table, matmul],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert weight_bytes(path, "onnxruntime")[0] == 8 * 50 * 2
    assert weight_bytes(path, "tensorrt") == (path.stat().st_size, "engine file size")
