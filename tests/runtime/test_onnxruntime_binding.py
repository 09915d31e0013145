"""The ONNX Runtime engine keeps its IOBinding between calls (runtime/engines/onnxruntime.py): what
it returns must still be each call's own result, whatever the caller changed, replaced or reshaped
since the last call, and outputs it is handed are written in place."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.engines.onnxruntime import COPY_LIMIT, OnnxRuntimeEngine


def _engine(tmp_path) -> OnnxRuntimeEngine:
    """y = x + b, z = x · 2 over float [N, M]."""
    nodes = [helper.make_node("Add", ["x", "b"], ["y"]), helper.make_node("Mul", ["x", "two"], ["z"])]
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", "m"]) for name in ("x", "b", "y", "z")]
    graph = helper.make_graph(nodes, "g", io[:2], io[2:], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, tmp_path / "add.onnx")
    return OnnxRuntimeEngine(tmp_path / "add.onnx", threads=1)


def test_each_call_sees_its_own_inputs(tmp_path):
    engine = _engine(tmp_path)
    x, b = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)
    (first,) = engine.run({"x": x, "b": b}, ["y"])
    x += 4  # the same array, changed in place
    (second,) = engine.run({"x": x, "b": b}, ["y"])
    np.testing.assert_array_equal(first, np.ones((2, 3)))  # not overwritten by the later call
    np.testing.assert_array_equal(second, np.full((2, 3), 5))
    wide = np.arange(12, dtype=np.float32).reshape(3, 4)  # another array, another shape
    strided = np.arange(24, dtype=np.float32).reshape(3, 8)[:, ::2]  # not contiguous
    (third,) = engine.run({"x": wide, "b": strided}, ["y"])
    np.testing.assert_array_equal(third, wide + strided)
    y, z = engine.run({"x": wide, "b": strided}, ["y", "z"])  # other outputs: a new binding
    np.testing.assert_array_equal(z, wide * 2)
    np.testing.assert_array_equal(y, wide + strided)


def test_outputs_handed_in_are_written_in_place(tmp_path):
    engine = _engine(tmp_path)
    x, b = np.full((2, 3), 3, np.float32), np.ones((2, 3), np.float32)
    target = np.zeros((2, 3), np.float32)
    (y,) = engine.run({"x": x, "b": b}, ["y"], into={"z": target})
    np.testing.assert_array_equal(target, np.full((2, 3), 6))
    np.testing.assert_array_equal(y, np.full((2, 3), 4))
    x[:] = 5
    other = np.zeros((2, 3), np.float32)
    engine.run({"x": x, "b": b}, ["y"], into={"z": other})  # another target: rebound
    np.testing.assert_array_equal(other, np.full((2, 3), 10))
    np.testing.assert_array_equal(target, np.full((2, 3), 6))


def test_outputs_whose_shape_the_inputs_do_not_give_are_allocated_by_the_runtime(tmp_path):
    """y [n, m] takes its shape from x and is bound to memory allocated before the run; w (x and b
    side by side) has an unnamed width, so the runtime allocates it: both are right, call after call."""
    nodes = [
        helper.make_node("Add", ["x", "b"], ["y"]),
        helper.make_node("Concat", ["x", "b"], ["w"], axis=1),
    ]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", "m"]) for name in ("x", "b")]
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m"]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n", None]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=10,
    )
    onnx.save(model, tmp_path / "concat.onnx")
    engine = OnnxRuntimeEngine(tmp_path / "concat.onnx", threads=1)
    assert engine._output_shape("y", {"x": np.zeros((2, 3)), "b": np.zeros((2, 3))}) == (2, 3)
    assert engine._output_shape("w", {"x": np.zeros((2, 3)), "b": np.zeros((2, 3))}) is None
    earlier = []
    for n, m in ((2, 3), (2, 3), (4, 1)):
        x = np.arange(n * m, dtype=np.float32).reshape(n, m)
        b = np.full((n, m), 10, np.float32)
        y, w = engine.run({"x": x, "b": b}, ["y", "w"])
        np.testing.assert_array_equal(y, x + b)
        np.testing.assert_array_equal(w, np.concatenate([x, b], axis=1))
        earlier.append((x + b, y))
    for expected, returned in earlier:  # no later call wrote into an earlier call's results
        np.testing.assert_array_equal(returned, expected)


def test_small_inputs_are_copied_in_and_large_ones_read_where_they_are(tmp_path):
    """Small inputs go into memory the engine keeps bound (new values copied in, call after call);
    inputs over COPY_LIMIT, and inputs that alias an output written in place (a slot pool's past
    and present), are bound where they are. Every call computes on its own inputs either way."""
    engine = _engine(tmp_path)
    small = [np.full((2, 3), v, np.float32) for v in (1, 2)]
    b = np.zeros((2, 3), np.float32)
    for x in small:  # new arrays of one shape: copied into the same bound buffer
        (y,) = engine.run({"x": x, "b": b}, ["y"])
        np.testing.assert_array_equal(y, x)
    kept = engine._bound["x"]
    assert kept is not small[-1] and not np.shares_memory(kept, small[-1])
    np.testing.assert_array_equal(small[0], np.ones((2, 3)))  # the caller's arrays untouched
    rows = COPY_LIMIT // (4 * 64) + 1
    large = np.arange(rows * 64, dtype=np.float32).reshape(rows, 64)
    (y,) = engine.run({"x": large, "b": np.ones_like(large)}, ["y"])
    np.testing.assert_array_equal(y, large + 1)
    assert engine._bound["x"] is large  # read in place
    (y,) = engine.run({"x": small[0], "b": b}, ["y"])  # small again, another shape than last
    np.testing.assert_array_equal(y, small[0])
    z = np.zeros((2, 3), np.float32)
    x = np.full((2, 3), 3, np.float32)
    engine.run({"x": x, "b": z}, ["y"], into={"z": x})  # x is read and doubled in place
    assert engine._bound["x"] is x
    np.testing.assert_array_equal(x, np.full((2, 3), 6))
