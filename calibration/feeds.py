"""What a component's calibration hook returns, and filling graph inputs it does not know.

A component that can run in int8 provides a hook (`Component.calibration` in
builder/build/components.py): (model dir, calibration config) → `CalibrationSet`. The set's
`feeds` turns the graph's declared inputs into one feed dict per engine call, in a fixed order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class GraphInput(Protocol):
    """What ONNX Runtime's `session.get_inputs()` reports per input."""

    name: str
    type: str  # "tensor(float)", "tensor(int64)", "tensor(bool)", …
    shape: list  # ints, axis names (str) or None


Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class CalibrationSet:
    description: str  # the data, for logs and the manifest
    samples: int
    digest: str  # sha256 of the samples as fed (tokens, pixels…): a changed digest redoes calibration
    feeds: Callable[[list[GraphInput]], Iterator[Feed]]  # one engine call per item


_DTYPES = {"float": np.float32, "float16": np.float16, "double": np.float64, "bool": np.bool_}


def filler(graph_input: GraphInput, axes: dict[str, int]) -> np.ndarray:
    """Zeros (False for masks) of the declared shape, for an input the hook does not know.
    Named axes take their size from `axes` (e.g. batch, seq), other dynamic axes size 1."""
    shape = [
        d if isinstance(d, int) else axes.get(d, 1) if isinstance(d, str) else 1 for d in graph_input.shape
    ]
    kind = graph_input.type.removeprefix("tensor(").removesuffix(")")
    return np.zeros(
        shape, _DTYPES.get(kind, np.dtype(kind) if kind.startswith(("int", "uint")) else np.float32)
    )


def digest_of(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()
