"""The roofline: bytes read per decoded token and the fraction of the bandwidth ceiling reached."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builder.bench.roofline import Bandwidth, kv_bytes_per_token, measure_bandwidth, roofline, weight_bytes
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


def _save(tmp_path, nodes, initializers, external: bool = False):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes[-1:]],
        initializer=initializers,
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=external, size_threshold=0,
              all_tensors_to_one_file=True, location="m.data")  # fmt: skip
    return path


def test_untied_gather_table_counts_one_row_and_tied_table_counts_in_full(tmp_path):
    embed = numpy_helper.from_array(np.zeros((50, 8), np.float32), "embed")  # 1600 B, row 32 B
    head = numpy_helper.from_array(np.zeros((8, 50), np.float16), "head")  # 800 B
    untied = _save(tmp_path, [helper.make_node("Gather", ["embed", "ids"], ["x"]),
                              helper.make_node("MatMul", ["x", "head"], ["y"])], [embed, head])  # fmt: skip
    read = weight_bytes(untied, "onnxruntime")
    assert (read.read_in_full, read.gather_rows, read.gather_tables) == (800, 32, 1600)
    assert read.per_token == 800 + 32
    # Tied: the LM head multiplies by the same table (transposed), so every step reads all of it.
    tied = _save(tmp_path, [helper.make_node("Gather", ["embed", "ids"], ["x"]),
                            helper.make_node("MatMul", ["x", "embed"], ["y"], )], [embed])  # fmt: skip
    read = weight_bytes(tied, "onnxruntime")
    assert (read.per_token, read.read_in_full, read.gather_rows) == (1600, 1600, 0)
    assert weight_bytes(tied, "tensorrt").per_token == tied.stat().st_size


def test_quantised_lookup_counts_rows_of_data_scales_and_zero_points_and_sizes_come_from_metadata(tmp_path):
    # GatherBlockQuantized (com.microsoft): uint8 data [50, 8] (16 int4 per row), scales/zero points [50, 1].
    data = numpy_helper.from_array(np.zeros((50, 8), np.uint8), "qdata")  # 400 B, row 8 B
    scales = numpy_helper.from_array(np.zeros((50, 1), np.float16), "scales")  # 100 B, row 2 B
    zeros = numpy_helper.from_array(np.zeros((50, 1), np.uint8), "zp")  # 50 B, row 1 B
    weight = numpy_helper.from_array(np.zeros((16, 4), np.float32), "w")  # 256 B: read in full
    int4 = helper.make_tensor("packed", TensorProto.INT4, [5, 3], np.zeros(15, np.int8), raw=False)  # 8 B
    nodes = [
        helper.make_node(
            "GatherBlockQuantized",
            ["qdata", "ids", "scales", "zp"],
            ["x"],
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=1,
            block_size=16,
        ),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Identity", ["packed"], ["z"]),
    ]
    for external in (False, True):  # sizes from raw data, then from the external data's length
        path = _save(tmp_path, nodes, [data, scales, zeros, weight, int4], external=external)
        read = weight_bytes(path, "onnxruntime")
        assert (read.read_in_full, read.gather_rows, read.gather_tables) == (256 + 8, 8 + 2 + 1, 550), (
            external
        )
