"""Shape-only ONNX initializers: a weight's name, type and dims with no data behind it.

A model too large for this machine (AutoGLM-Phone-9B: ~41 GB of fp32 weights) is still exported,
rewritten per precision and checked at its real size when every weight is a stand-in that names
its type and shape only. Such a tensor is stored as external data at `NO_WEIGHTS`, an empty file
beside the graph (ONNX's checker wants the named file to exist); no offset or length is written,
since nothing could be read there. Graph passes that only move, retype or replace weights work on
them unchanged; reading one (`numpy_helper.to_array`, ONNX Runtime) fails, which is the point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

NO_WEIGHTS = "no-weights.shape-only"
_FOUR_BIT = frozenset({TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1})


def shape_only_tensor(name: str, data_type: int, dims: Sequence[int]) -> TensorProto:
    tensor = TensorProto(name=name, data_type=data_type, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=NO_WEIGHTS)
    return tensor


def is_shape_only(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL and any(
        entry.key == "location" and entry.value == NO_WEIGHTS for entry in tensor.external_data
    )


def has_shape_only(model: onnx.ModelProto) -> bool:
    return any(is_shape_only(tensor) for tensor in model.graph.initializer)


def tensor_bytes(tensor: TensorProto) -> int:
    """Bytes the tensor holds (or would hold): its element count × element size, 4-bit types packed."""
    count = math.prod(tensor.dims)
    if tensor.data_type in _FOUR_BIT:
        return -(-count // 2)
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def write_no_weights_file(directory: Path) -> None:
    """Create the empty file shape-only tensors name, in the directory of the graphs that use them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / NO_WEIGHTS).touch()
