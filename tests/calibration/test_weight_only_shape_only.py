"""Weight-only quantisation of shape-only weights: the nodes and tensor types and shapes it writes
for real weights, with no data read or written (calibration/weight_only.py, runtime/shape_only.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration.weight_only import INT8, Scheme, weight_only
from runtime.shape_only import is_shape_only, shape_only_tensor, tensor_bytes


def _model(k: int, n: int, shape_only: bool, transposed_gemm: bool = False) -> onnx.ModelProto:
    """x [1, K] → MatMul(W [K, N]) → Gemm(V [N, N], transB as asked) → y."""
    w = np.ones((k, n), np.float32)
    v = np.ones((n, n), np.float32)
    weights = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")]
    if shape_only:
        weights = [shape_only_tensor(t.name, t.data_type, t.dims) for t in weights]
    gemm = helper.make_node("Gemm", ["h", "V"], ["y"], name="gemm", transB=int(transposed_gemm))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"), gemm],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("scheme", [Scheme(4, 32), INT8], ids=["int4", "int8"])
@pytest.mark.parametrize("transposed_gemm", [False, True])
def test_same_graph_as_real_weights(scheme: Scheme, transposed_gemm: bool) -> None:
    real, shape = _model(100, 48, False, transposed_gemm), _model(100, 48, True, transposed_gemm)
    real_report, shape_report = weight_only(real, scheme), weight_only(shape, scheme)
    assert shape_report.as_dict() == real_report.as_dict()
    assert [n.SerializeToString() for n in shape.graph.node] == [
        n.SerializeToString() for n in real.graph.node
    ]
    real_weights = {t.name: (t.data_type, list(t.dims), tensor_bytes(t)) for t in real.graph.initializer}
    shape_weights = {t.name: (t.data_type, list(t.dims), tensor_bytes(t)) for t in shape.graph.initializer}
    assert shape_weights == real_weights
    assert all(is_shape_only(t) for t in shape.graph.initializer)


def test_tensor_bytes_packs_four_bit_types() -> None:
    assert tensor_bytes(shape_only_tensor("q", TensorProto.INT4, [7, 3])) == 11
    assert tensor_bytes(shape_only_tensor("w", TensorProto.FLOAT16, [7, 3])) == 42
    assert tensor_bytes(numpy_helper.from_array(np.zeros((2, 3), np.float32))) == 24
