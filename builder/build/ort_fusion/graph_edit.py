"""Small edits of an onnx_ir graph shared by the passes that rebuild I/O (kv_slots, new_kv, packing)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """`array` as an initializer registered in `graph`."""
    value = ir.Value(
        name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.tensor(array, name=name),
    )  # fmt: skip
    graph.register_initializer(value)
    return value


def constant(graph: ir.Graph, name: str, values) -> ir.Value:
    """An int64 initializer (shapes, axes, indices) registered in `graph`."""
    return initializer(graph, name, np.asarray(values, np.int64))


def take_over(old: ir.Value, new: ir.Value) -> None:
    """`new` replaces `old` everywhere, as a graph output too, under `old`'s name and type."""
    name = old.name
    new.type, new.shape = old.type, old.shape
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name, new.name = f"{name}.replaced", name
