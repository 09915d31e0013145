"""TensorRT engine: a serialized plan run through execution contexts, one per optimization profile.

Per call: pick the profile the feeds fit (decode before prefill), `set_input_shape` for every
input, copy inputs into fixed device buffers through pinned staging, run `execute_async_v3` on one
stream (or replay the CUDA graph captured for these shapes), copy the requested outputs back.

The KV pool. The paged decoder (runtime/paged_decoder.py) owns the pool in host memory and writes
each call's new K/V into it in place, exactly as with ONNX Runtime, so the host pool stays the
single source of truth. Per call this engine uploads only the pool blocks the call's block tables
name (the working set attention reads), packed into a compact device pool, and renumbers the
block tables to it: exact, and bounded by the context actually attended to. Decode calls pad the
tables to a power-of-two number of blocks (block 0, masked by past_lens) so the shapes — and the
CUDA graph captured for them — repeat: one graph per (decode profile, batch size, block bucket).
Keeping the pool resident on the GPU (no per-step upload) needs the decoder to hand this engine
the slot mapping of new K/V; see docs/tensorrt.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import cuda
from runtime import decoder_io as io
from runtime.engines.base import Engine
from runtime.engines.tensorrt_pool import compact_pool
from runtime.errors import RuntimeUserError

DECODE_PROFILE = "decode"


class TensorRTEngine(Engine):
    def __init__(self, path: Path, cuda_graphs: bool = True) -> None:
        import tensorrt as trt

        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeUserError(f"TensorRT could not deserialize {path} (see its log above)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.input_dtypes = {n: self.dtypes[n] for n in self.inputs}
        self.kv_names = [n for n in self.inputs if n.split(".")[0] in ("key_cache", "value_cache")]
        self.stream = cuda.Stream()
        count = self.engine.num_optimization_profiles
        self.profiles = [
            _ProfileRunner(self, index, cuda_graphs and count > 1 and index == 1) for index in range(count)
        ]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        decode = io.INPUT_IDS in feeds and feeds[io.INPUT_IDS].shape[1] == 1 and len(self.profiles) > 1
        if self.kv_names:
            feeds = compact_pool(feeds, self.kv_names, pad_to_bucket=decode)
        order = [self.profiles[1], self.profiles[0]] if decode else self.profiles
        for runner in order:
            if runner.fits(feeds):
                return runner.run(feeds, outputs)
        shapes = {name: feeds[name].shape for name in self.inputs}
        raise RuntimeUserError(
            f"inputs {shapes} fit none of the engine's optimization profiles "
            f"({'; '.join(r.describe() for r in self.profiles)}); rebuild with larger limits"
        )

    def close(self) -> None:
        for runner in self.profiles:
            runner.close()
        self.stream.close()


class _ProfileRunner:
    """One execution context bound to one optimization profile, with buffers sized for its max
    shapes (allocated once, so tensor addresses never change and CUDA graphs stay valid)."""

    def __init__(self, owner: TensorRTEngine, index: int, cuda_graphs: bool) -> None:
        self.owner, self.index, self.cuda_graphs = owner, index, cuda_graphs
        engine, stream = owner.engine, owner.stream
        self.ranges = {n: [tuple(s) for s in engine.get_tensor_profile_shape(n, index)] for n in owner.inputs}
        self.context = engine.create_execution_context()
        self.context.set_optimization_profile_async(index, stream.ptr)
        for name, (_, _, high) in self.ranges.items():
            self.context.set_input_shape(name, high)
        sizes = {n: int(np.prod(self.ranges[n][2])) for n in owner.inputs}
        sizes |= {n: int(np.prod(self.context.get_tensor_shape(n))) for n in owner.outputs}
        self.device = {n: cuda.DeviceBuffer(size * owner.dtypes[n].itemsize) for n, size in sizes.items()}
        self.staging = {n: cuda.PinnedArray(size * owner.dtypes[n].itemsize) for n, size in sizes.items()}
        for name, buffer in self.device.items():
            self.context.set_tensor_address(name, buffer.ptr)
        self.graphs: dict[tuple, cuda.CudaGraph] = {}

    def describe(self) -> str:
        return f"profile {self.index}: " + ", ".join(
            f"{n} {lo}–{hi}" for n, (lo, _, hi) in self.ranges.items()
        )

    def fits(self, feeds: dict[str, np.ndarray]) -> bool:
        for name, (low, _, high) in self.ranges.items():
            shape = feeds[name].shape
            if len(shape) != len(low) or any(
                not a <= s <= b for a, s, b in zip(low, shape, high, strict=True)
            ):
                return False
        return True

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        owner, stream = self.owner, self.owner.stream
        for name in owner.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=owner.dtypes[name])
            stage = self.staging[name].view(array.dtype, array.shape)
            stage[...] = array
            cuda.copy_to_device(self.device[name].ptr, stage, stream)
            if not self.context.set_input_shape(name, array.shape):
                raise RuntimeUserError(f"TensorRT refused shape {array.shape} for input {name}")
        key = tuple(feeds[name].shape for name in owner.inputs)
        if self.cuda_graphs:
            graph = self.graphs.get(key) or self._capture(key)
            graph.launch(stream)
        elif not self.context.execute_async_v3(stream.ptr):
            raise RuntimeUserError("TensorRT execution failed (see its log above)")
        results = []
        for name in outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            host = self.staging[name].view(owner.dtypes[name], shape)
            cuda.copy_to_host(host, self.device[name].ptr, stream)
            results.append(host)
        stream.synchronize()
        return [np.array(r) for r in results]  # staging is reused by the next call

    def _capture(self, key: tuple) -> cuda.CudaGraph:
        stream = self.owner.stream
        # One plain run first: TensorRT performs deferred shape-dependent setup on the first
        # enqueue after shapes change, which must not land inside the capture.
        if not self.context.execute_async_v3(stream.ptr):
            raise RuntimeUserError("TensorRT execution failed (see its log above)")
        graph = cuda.CudaGraph.capture(stream, lambda: self.context.execute_async_v3(stream.ptr))
        self.graphs[key] = graph
        return graph

    def close(self) -> None:
        for graph in self.graphs.values():
            graph.close()
        for buffer in [*self.device.values(), *self.staging.values()]:
            buffer.close()
