"""The memory-bandwidth roofline of batch-1 decode.

Decoding one token at batch 1 reads every weight once and the K/V of every cached token once, and
does little arithmetic per byte, so its speed limit is the machine's memory read bandwidth:

    bytes_per_token = weight_bytes + kv_bytes
    weight_bytes    = the engine file's size (its initializers; all are read on every step)
    kv_bytes        = num_layers × 2 (K and V) × context × num_kv_heads × head_dim × kv itemsize
    ceiling_tok_s   = bandwidth / bytes_per_token
    fraction        = measured decode tokens/s at batch 1 ÷ ceiling_tok_s

Bandwidth is the best of a few timed sums over an array much larger than the caches, split over
as many threads as the engines use (one core alone cannot saturate the memory controller).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def weight_bytes(path: Path, backend: str) -> tuple[int, str]:
    """Bytes of weights one decode step reads, and how they were counted.

    ONNX engines: all initializers except tables read through Gather (an embedding lookup reads
    one row per token, not the table; the optimized graph keeps a separate copy for the LM head,
    which is read in full and counted). Other backends: the engine file's size.
    """
    if backend != "onnxruntime":
        return path.stat().st_size, "engine file size"
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    gathered = {node.input[0] for node in graph.node if node.op_type == "Gather"}
    total = 0
    for tensor in graph.initializer:
        if tensor.name in gathered:
            continue
        if uses_external_data(tensor):
            info = {entry.key: entry.value for entry in tensor.external_data}
            total += int(info.get("length", 0))
        else:
            total += len(tensor.raw_data) or _typed_bytes(tensor)
    return total, "ONNX initializers, Gather tables excluded"


def _typed_bytes(tensor) -> int:
    from onnx import helper

    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
