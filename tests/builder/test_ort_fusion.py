"""The ONNX Runtime engine step's fusions (builder/build/ort_fusion/): what they make of real
exported decoders, the MatMulNBits layout against numpy, packing, and the engine comparison."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from builder.build.ort_fusion.compare import compare_engine
from builder.build.ort_fusion.matmul_nbits import fuse_matmul_nbits, nbits_tensors
from runtime import decoder_io as io
from runtime.manifest import Manifest


def test_fused_decoders_run_gqa_over_slots_updated_in_place(built):
    model_dir, engines = built
    manifest = Manifest.load(engines)
    layers = manifest.decoder["num_layers"]
    for precision in ("fp32",):
        entry = manifest.entry("text_decoder", precision)
        report = entry.report
        assert report["fusions"]["GroupQueryAttention (paged)"] == layers
        assert report["fusions"]["past in per-sequence slots, updated in place"] == layers
        before, after = report["nodes_per_layer"]
        assert after < before / 2, report["nodes_per_layer"]
        assert report["validation"]["checks"] and all(c["passed"] for c in report["validation"]["checks"])
        names = [spec.name for spec in entry.inputs]
        assert [n for n in names if n.startswith(("key_cache.", "value_cache."))] == io.kv_input_names(layers)
        assert all(len(spec.shape) == 4 for spec in entry.inputs if spec.name.startswith("key_cache."))
        outputs = [spec.name for spec in entry.outputs]
        assert outputs[2:] == io.kv_present_names(layers), outputs
        model = onnx.load(str(engines / entry.file), load_external_data=False)
        ops = Counter(n.op_type for n in model.graph.node)
        assert ops["GroupQueryAttention"] == layers and ops["Softmax"] == 0
        assert ops["SkipSimplifiedLayerNormalization"] >= 2 * layers - 1
        attention = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
        producers = {out: n for n in model.graph.node for out in n.output}
        # each layer's past is its K/V input itself and its present an output (bound in place)
        kv_pairs = [(n.input[3 + j], n.output[1 + j]) for n in attention for j in range(2)]
        assert kv_pairs == list(zip(io.kv_input_names(layers), io.kv_present_names(layers), strict=True))
        assert not any(name in producers for name, _ in kv_pairs)
        assert "prefill b3 ragged" in {c["case"] for c in report["validation"]["checks"]}
        rotating = [n for n in attention if any(a.name == "do_rotary" and a.i == 1 for a in n.attribute)]
        if model_dir.name == "smollm2-135m":
            # q/k/v packed into GQA, which rotates them; new_kv's K of every layer rotated by one
            # RotaryEmbedding; prompts prefilled one at a time (paged_attention.py)
            assert len(rotating) == layers and ops["RotaryEmbedding"] == 1
            assert all(not n.input[1] and not n.input[2] and len(n.input) == 10 for n in rotating)
            assert report["fusions"]["  of which read packed q/k/v and rotate them"] == layers
        else:  # glm4v-tiny: 4 rotary frequencies, fewer than GQA's own rotary takes
            assert not rotating and ops["RotaryEmbedding"] == 2 * layers
        metadata = {p.key: p.value for p in model.metadata_props}
        assert metadata.get("autoglm_trt.batched_prefill", "true") == ("false" if rotating else "true")


@pytest.mark.parametrize(("bits", "block", "k"), [(4, 32, 96), (4, 32, 80), (8, 128, 96)])
def test_nbits_layout_decodes_to_the_weight(bits, block, k):
    rng = np.random.default_rng(0)
    n, qmax = 5, (7 if bits == 4 else 127)
    q = rng.integers(-qmax, qmax + 1, (n, k))
    scale = np.repeat(rng.random((n, -(-k // block))).astype(np.float32) + 0.1, block, axis=1)[:, :k]
    b, scales = nbits_tensors(q, scale, bits, block)
    assert b.dtype == np.uint8 and b.shape == (n, -(-k // block), block * bits // 8)
    stored = b.reshape(n, -1)
    if bits == 4:  # low nibble first
        stored = np.stack([stored & 15, stored >> 4], axis=-1).reshape(n, -1)
    decoded = (stored.astype(np.int64) - (1 << (bits - 1))) * np.repeat(scales, block, axis=1)
    np.testing.assert_array_equal(decoded[:, :k], q * scale)
    assert not decoded[:, k:].any()  # padding is the zero point


def test_nbits_rejects_scales_that_vary_inside_a_block():
    scale = np.ones((2, 64), np.float32)
    scale[0, 5] = 2
    with pytest.raises(ValueError, match="vary within a block"):
        nbits_tensors(np.ones((2, 64), np.int64), scale, 4, 32)


def _weight_only_graph(
    k: int, sizes: list[int], block: int, joined: bool = False
) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """x [2, k] → one int4 DQ → MatMul per size, all reading x (a q/k/v-like group); `joined`: the
    products concatenated into one output (GroupQueryAttention's packed q/k/v)."""
    rng = np.random.default_rng(1)
    nodes, inits, outputs, weights = [], [], [], []
    for index, n in enumerate(sizes):
        q = rng.integers(-7, 8, (k, n)).astype(np.int8)
        scale = rng.random((-(-k // block), n)).astype(np.float32) + 0.1
        inits += [helper.make_tensor(f"w{index}", TensorProto.INT4, [k, n], _pack_int4(q), raw=True),
                  numpy_helper.from_array(scale, f"s{index}")]  # fmt: skip
        nodes += [
            helper.make_node(
                "DequantizeLinear", [f"w{index}", f"s{index}"], [f"d{index}"], axis=0, block_size=block
            ),
            helper.make_node("MatMul", ["x", f"d{index}"], [f"y{index}"]),
        ]
        outputs.append(helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, [2, n]))
        weights.append(q * np.repeat(scale, block, axis=0)[:k])
    if joined:
        nodes.append(helper.make_node("Concat", [f"y{i}" for i in range(len(sizes))], ["y"], axis=-1))
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, sum(sizes)])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return model, weights


def _pack_int4(q: np.ndarray) -> bytes:
    nibbles = q.astype(np.int8).ravel().view(np.uint8) & 15
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def test_projections_reading_one_input_become_one_matmulnbits(tmp_path):
    model, weights = _weight_only_graph(64, [48, 16, 16], block=32)
    fused = ir.from_proto(model)
    counts = fuse_matmul_nbits(fused, accuracy_level=0)
    assert counts["MatMulNBits / GatherBlockQuantized"] == 3
    assert counts["packed projections (nodes saved)"] == 1
    proto = ir.to_proto(fused)
    ops = Counter(n.op_type for n in proto.graph.node if n.op_type not in ("DequantizeLinear", "MatMul"))
    live = {o for n in proto.graph.node for o in n.output} & {o.name for o in proto.graph.output}
    assert ops["MatMulNBits"] == 1 and ops["Split"] == 1 and len(live) == 3
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, weight in zip(session.run(None, {"x": x}), weights, strict=True):
        np.testing.assert_allclose(got, x @ weight, rtol=1e-5, atol=1e-5)


def test_projections_read_packed_lose_their_split(tmp_path):
    """q/k/v concatenated for GroupQueryAttention: one MatMulNBits, no Split, no Concat."""
    model, weights = _weight_only_graph(64, [48, 16, 16], block=32, joined=True)
    fused = ir.from_proto(model)
    counts = fuse_matmul_nbits(fused, accuracy_level=0)
    assert counts["packed q/k/v read by GroupQueryAttention as packed"] == 1
    proto = ir.to_proto(fused)
    ops = Counter(n.op_type for n in proto.graph.node if n.op_type not in ("DequantizeLinear", "MatMul"))
    assert ops == {"MatMulNBits": 1}, ops
    x = np.random.default_rng(2).standard_normal((2, 64)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x})
    np.testing.assert_allclose(got, x @ np.concatenate(weights, axis=1), rtol=1e-5, atol=1e-5)


def test_engine_comparison_catches_a_wrong_engine(tmp_path, glm4v_tiny_engines):
    """A fused engine whose attention scale is off must fail the comparison its build runs."""
    manifest = Manifest.load(glm4v_tiny_engines)
    engine = glm4v_tiny_engines / manifest.entry("text_decoder", "fp32").file
    graph = glm4v_tiny_engines.parent.parent / "build" / "glm4v-tiny" / "text_decoder.fp32.onnx"
    good = compare_engine(graph, engine, min_cosine=0.99999)
    assert all(c.passed for c in good)
    model = onnx.load(str(engine))
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            next(a for a in node.attribute if a.name == "scale").f *= 3
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    bad = compare_engine(graph, broken, min_cosine=0.99999)
    assert not all(c.passed for c in bad)
