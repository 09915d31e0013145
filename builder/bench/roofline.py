"""The memory-bandwidth roofline of batch-1 decode.

Decoding one token at batch 1 reads every weight once and the K/V of every cached token once, and
does little arithmetic per byte, so its speed limit is the machine's memory read bandwidth:

    bytes_per_token = weight_bytes + kv_bytes
    weight_bytes    = every initializer of the engine graph (quantised weights, scales and zero
                      points included), except lookup-only tables (Gather / GatherBlockQuantized
                      and no other user), which count one row: the one token's row
    kv_bytes        = num_layers × 2 (K and V) × context × num_kv_heads × head_dim × kv itemsize
    ceiling_tok_s   = bandwidth / bytes_per_token
    fraction        = measured decode tokens/s at batch 1 ÷ ceiling_tok_s

at each measured decode context (the KV part grows with it).

Bandwidth is the best of a few timed sums over an array much larger than the caches, split over
as many threads as the engines use (one core alone cannot saturate the memory controller).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from runtime.paged_decoder import DecoderLimits


@dataclass(frozen=True)
class Bandwidth:
    gb_per_s: float  # 1e9 bytes per second
    array_mb: int
    threads: int
    trials: int


def measure_bandwidth(array_mb: int = 1024, threads: int = 0, trials: int = 5) -> Bandwidth:
    """Best-of-`trials` read bandwidth of a numpy sum over `array_mb` MiB of float32 (numpy releases
    the GIL in reductions, so the threads read in parallel)."""
    threads = threads or os.cpu_count() or 1
    data = np.ones(array_mb * 2**20 // 4, np.float32)  # ones, not empty: every page is really mapped
    chunks = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.sum, chunks))  # warm-up: fault the pages in, start the threads
        for _ in range(trials):
            start = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = min(best, time.perf_counter() - start)
    return Bandwidth(round(data.nbytes / best / 1e9, 2), array_mb, threads, trials)


def kv_bytes_per_token(limits: DecoderLimits, context: int, kv_itemsize: int) -> int:
    """K/V bytes one decode step reads at `context` cached tokens (one sequence)."""
    return limits.num_layers * 2 * context * limits.num_kv_heads * limits.head_dim * kv_itemsize


def roofline(
    bandwidth: Bandwidth, weight_bytes: int, kv_bytes: int, measured_tokens_per_s: float
) -> dict[str, float]:
    bytes_per_token = weight_bytes + kv_bytes
    ceiling = bandwidth.gb_per_s * 1e9 / bytes_per_token
    return {
        "weight_bytes": weight_bytes,
        "kv_bytes": kv_bytes,
        "bytes_per_token": bytes_per_token,
        "ceiling_tokens_per_s": round(ceiling, 2),
        "measured_tokens_per_s": round(measured_tokens_per_s, 2),
        "fraction": round(measured_tokens_per_s / ceiling, 4),
    }


class WeightBytes(NamedTuple):
    """Initializer bytes one batch-1 decode step reads, split by how they are read."""

    per_token: int  # read_in_full + gather_rows
    read_in_full: int  # every initializer some node other than a table lookup reads
    gather_rows: int  # one row of each lookup-only table (one token at batch 1)
    gather_tables: int  # the whole size of those tables, for reference
    counted_as: str


# Ops whose (op, input index) reads only the rows its indices select.
LOOKUPS = {
    ("Gather", 0),
    ("GatherBlockQuantized", 0),
    ("GatherBlockQuantized", 2),
    ("GatherBlockQuantized", 3),
}
LOOKUP_AXIS = {"Gather": "axis", "GatherBlockQuantized": "gather_axis"}
PACKED_4BIT = {TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT4E2M1}


def weight_bytes(path: Path, backend: str) -> WeightBytes:
    """Bytes of initializers one batch-1 decode step reads (sizes only: no tensor data is loaded).

    ONNX engines: every initializer in full (weights, quantised weights, their scales and zero
    points), except tables that are only read through Gather / GatherBlockQuantized (an embedding
    lookup): those count one row, as one token reads one row. A table that another node also uses
    (an embedding tied to the LM head's MatMul) is read in full. Other backends: the file's size.
    """
    if backend != "onnxruntime":
        size = path.stat().st_size
        return WeightBytes(size, size, 0, 0, "engine file size")
    model = onnx.load(str(path), load_external_data=False)
    uses: dict[str, list[tuple[str, int, int]]] = {}  # name → (op, input index, lookup axis)
    for node in _nodes(model.graph):
        axis = next((a.i for a in node.attribute if a.name == LOOKUP_AXIS.get(node.op_type)), 0)
        for index, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, index, axis))
    full = rows = tables = 0
    for tensor in model.graph.initializer:
        size = tensor_bytes(tensor)
        used = uses.get(tensor.name, [])
        if used and all((op, index) in LOOKUPS for op, index, _ in used):
            axis = used[0][2]
            axis = axis + len(tensor.dims) if axis < 0 else axis
            rows += -(-size // tensor.dims[axis]) if tensor.dims else size
            tables += size
        else:
            full += size
    return WeightBytes(full + rows, full, rows, tables, "ONNX initializers; lookup-only tables: one row")


def _nodes(graph):
    """Every node, those of subgraphs (If, Loop, Scan) included: their uses count too."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _nodes(sub)


def tensor_bytes(tensor) -> int:
    """Stored bytes of an initializer from its metadata: the external data length, the raw data,
    or element count × item size (4-bit types pack two elements per byte)."""
    from onnx.external_data_helper import uses_external_data

    if uses_external_data(tensor):
        info = {entry.key: entry.value for entry in tensor.external_data}
        if "length" in info:
            return int(info["length"])
    elif tensor.raw_data:
        return len(tensor.raw_data)
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    if tensor.data_type in PACKED_4BIT:
        return -(-count // 2)
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
