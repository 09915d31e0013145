"""ONNX graphs on disk: one `.onnx` file plus, for models too big for one protobuf (2 GB), the
external data files it names. Every step that writes a graph goes through `save_graph` or
`staged_graph`, so large models get external data and a graph never appears before its data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

# Protobuf cannot serialise 2 GB; a margin below it leaves room for the graph itself. The
# environment variable lets tests take the external-data path with small models.
EXTERNAL_DATA_MIN_BYTES = int(os.environ.get("AUTOGLM_TRT_EXTERNAL_DATA_BYTES", 1 << 30))
# Tensors under this stay inline (scales, shapes): one file read per weight, not per constant.
EXTERNAL_TENSOR_MIN_BYTES = 1024
# Streamed weights start on page boundaries, where ONNX Runtime can memory-map them.
TENSOR_ALIGNMENT = 4096


def data_file_name(graph: Path) -> str:
    return f"{graph.name}.data"


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers, inline or external (no data is read)."""
    total = 0
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            total += int(next((e.value for e in tensor.external_data if e.key == "length"), 0))
        else:
            total += len(tensor.raw_data) or onnx.numpy_helper.to_array(tensor).nbytes
    return total


def needs_external_data(model: onnx.ModelProto) -> bool:
    return weight_bytes(model) >= EXTERNAL_DATA_MIN_BYTES


def data_files(graph: Path) -> list[str]:
    """The external data files `graph` names, relative to its directory, in first-use order
    (none for files that are not ONNX, such as TensorRT plans)."""
    if graph.suffix != ".onnx":
        return []
    return model_data_files(onnx.load(str(graph), load_external_data=False))


def model_data_files(model: onnx.ModelProto) -> list[str]:
    """The external data files a loaded graph names, in first-use order."""
    names: dict[str, None] = {}
    for tensor in _all_tensors(model):
        if uses_external_data(tensor):
            names.setdefault(next(e.value for e in tensor.external_data if e.key == "location"))
    return list(names)


def graph_complete(graph: Path) -> bool:
    """Whether `graph` exists and each data file it names is there and long enough for every
    tensor read from it: a missing, renamed or truncated data file makes a build step redo it."""
    if not graph.is_file():
        return False
    model = onnx.load(str(graph), load_external_data=False)
    needed: dict[str, int] = {}
    for tensor in _all_tensors(model):
        if uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            end = int(info.get("offset", 0)) + int(info.get("length", 0))
            needed[info["location"]] = max(needed.get(info["location"], 0), end)
    for name, end in needed.items():
        path = graph.parent / name
        if not path.is_file() or path.stat().st_size < end:
            return False
    return True


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from model.graph.initializer
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t


def graph_files(graph: Path) -> list[Path]:
    """The graph and its data files."""
    return [graph, *(graph.parent / name for name in data_files(graph))]


def graph_digest(graph: Path) -> str:
    """sha256 over the graph and its data files (names and bytes): what a build step's record
    keys on, so a changed weight file makes the steps after it stale."""
    digest = hashlib.sha256()
    for path in graph_files(graph):
        digest.update(path.name.encode() + b"\0")
        update_digest(digest, path)
    return digest.hexdigest()


def update_digest(digest, path: Path) -> None:
    """Stream a file into a hashlib digest (files here reach gigabytes)."""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    update_digest(digest, path)
    return digest.hexdigest()


@contextmanager
def staged_graph(graph: Path) -> Iterator[Path]:
    """A path to write `graph` (and data files named after it) to, in a private directory beside
    it; on success the data files move into place first, then the graph. On failure, or when
    interrupted, nothing of the new graph is left and the old one is untouched."""
    staging = graph.parent / f".{graph.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        yield staging / graph.name
        publish_graph(staging / graph.name, graph)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_graph(staged: Path, graph: Path) -> None:
    """Move a graph written under another directory (same name) into place, data files first.
    Its own old data file goes when the new graph has none (a graph may also name another
    graph's data file, e.g. a Q/DQ graph its fp32 weights: those stay)."""
    new = data_files(staged)
    for name in new:
        if (staged.parent / name).exists():
            os.replace(staged.parent / name, graph.parent / name)
    os.replace(staged, graph)
    if data_file_name(graph) not in new:
        (graph.parent / data_file_name(graph)).unlink(missing_ok=True)


# (tensor, its stored bytes) → the bytes of its data as the tensor now types it
Convert = Callable[[onnx.TensorProto, np.ndarray], np.ndarray]


def save_graph(
    model: onnx.ModelProto, graph: Path, weights_from: Path | None = None, convert: Convert | None = None
) -> None:
    """Write `model` to `graph`, its weights in `<graph>.data` when the model is large.

    `weights_from`: the directory of the graph `model` was loaded from without its external data
    (a pass that rewrote the graph, not the weights). Each such weight is streamed from there into
    `<graph>.data`, one tensor at a time through `convert`, so memory holds one tensor, not the model.
    """
    with staged_graph(graph) as path:
        if weights_from is not None and any(_streamed(t) for t in _all_tensors(model)):
            _stream_weights(model, weights_from, path.parent / data_file_name(graph), convert)
            onnx.save(model, str(path))
        elif needs_external_data(model):
            onnx.save(
                model,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_file_name(graph),
                size_threshold=EXTERNAL_TENSOR_MIN_BYTES,
            )
        else:
            onnx.save(model, str(path))


def _streamed(tensor: onnx.TensorProto) -> bool:
    """External data with a length: real bytes somewhere (shape-only stand-ins name no length)."""
    return uses_external_data(tensor) and any(e.key == "length" for e in tensor.external_data)


def _stream_weights(model: onnx.ModelProto, source: Path, target: Path, convert: Convert | None) -> None:
    offset = 0
    with target.open("wb") as out:
        for tensor in filter(_streamed, _all_tensors(model)):
            info = {e.key: e.value for e in tensor.external_data}
            stored = np.fromfile(
                source / info["location"],
                np.uint8,
                count=int(info["length"]),
                offset=int(info.get("offset", 0)),
            )
            data = np.ascontiguousarray(convert(tensor, stored) if convert else stored).view(np.uint8)
            padding = -offset % TENSOR_ALIGNMENT
            out.write(b"\0" * padding)
            offset += padding
            out.write(data.data)
            del tensor.external_data[:]
            for key, value in (("location", target.name), ("offset", offset), ("length", data.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            offset += data.nbytes


def remove_graph(graph: Path) -> None:
    """Delete `graph` and its own data file."""
    graph.unlink(missing_ok=True)
    (graph.parent / data_file_name(graph)).unlink(missing_ok=True)
