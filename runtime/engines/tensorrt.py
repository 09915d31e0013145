"""TensorRT engine: a serialized plan run through execution contexts, one per optimization profile.

Per call: pick the profile the feeds fit (decode before prefill), copy inputs into fixed device
buffers through pinned staging, `set_input_shape` for every input and run `execute_async_v3` on one
stream, or replay the CUDA graph captured for these shapes; copy the requested outputs back.

CUDA graphs. TensorRT's developer guide ("CUDA Graphs") says a graph must be re-captured once the
context's input shapes change, and recommends one execution context per captured graph with device
memory shared across the contexts. So each decode graph key gets its own context, its shapes set
once; every context of this engine draws on one activation buffer, which is safe because all of
them run serialized on one stream (the Engine contract: one `run` at a time).

The KV pool lives on the GPU (runtime/engines/device_kv_pool.py): one allocation, made when the
decoder asks for it (`create_kv_pool`), whose per-layer slabs are bound as the KV inputs of every
context of both profiles. A decoder call (`run_step`) uploads only the small inputs (ids,
positions, past lengths, block tables, logit index, the slot mapping), runs the plan, scatters the
call's `new_kv` into the pool on the device and copies back only the logits. Decode calls pad the
block tables to a power-of-two number of blocks, capped at the profile's maximum (block 0, masked
by past_lens), so the shapes repeat and one CUDA graph per (batch size, block bucket) covers the
whole step: the engine call and the scatter.

Buffers. Small inputs and new_kv get buffers for their profile's max shapes. Logits do not: the prefill
profile's max is [8, max_seq_len, V] (logit_positions reaches max_seq_len so one sequence can be
scored at every position), 9.9 GB for a 151,552-token vocabulary at 2048, while generation reads
one position per sequence. They start at [B, 1, V] and grow to what a call's logit_index asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime import cuda
from runtime import decoder_io as io
from runtime.engines.base import DeviceTensor, Engine
from runtime.engines.tensorrt_pool import pad_block_tables
from runtime.errors import RuntimeUserError
from runtime.kv.pool import KVPool, KVPoolSpec, SlotMapping


class TensorRTRuntimeError(RuntimeUserError):
    """TensorRT refused a profile, shape or tensor address, or failed to execute (its log says why)."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise TensorRTRuntimeError(f"TensorRT {what} (see its log above)")


def _enqueue(context, stream: cuda.Stream) -> None:
    _check(context.execute_async_v3(stream.ptr), "execution failed")


def first_output_shape(name: str, max_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an output's buffers are first allocated for, given its shape at the profile's max
    inputs: logits [B, T, V] -> [B, 1, V] (one position per sequence, what generation reads; the
    decoder returns logits only at logit_index's T positions); every other output, its max."""
    if name == io.LOGITS and len(max_shape) == 3:
        return (max_shape[0], 1, max_shape[2])
    return tuple(max_shape)


def allocation_strategy(trt, shared_buffer: bool):
    """USER_MANAGED where every context draws on one shared activation buffer (TensorRT ≥ 10.1);
    else ON_PROFILE_CHANGE (TensorRT 10.0, where the enum and all three values first appear): each
    context allocates for the profile it selects. The default, STATIC, gives every context the
    largest profile's (prefill's) memory, and a decoder holds up to 2 + 64 contexts."""
    strategies = trt.ExecutionContextAllocationStrategy
    return strategies.USER_MANAGED if shared_buffer else strategies.ON_PROFILE_CHANGE


class _Graph(NamedTuple):
    context: object  # the execution context this graph was captured from (its own)
    graph: cuda.CudaGraph


class TensorRTEngine(Engine):
    def __init__(self, path: Path, cuda_graphs: bool = True, device: int | None = None) -> None:
        """`device`: the CUDA device this engine, its buffers and its KV pool live on (a pipeline
        stage's, `--devices`); None: the current one (0)."""
        import tensorrt as trt

        self.device = device or 0
        cuda.set_device(self.device)
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
        self.pool = None  # DeviceKVPool, once the decoder creates it
        self.stream = cuda.Stream()
        self.scratch = _activation_buffer(self.engine)
        count = self.engine.num_optimization_profiles
        self.profiles = [
            ProfileRunner(self, index, cuda_graphs and count > 1 and index == 1) for index in range(count)
        ]
        # Decode buckets stop at the decode profile's most blocks per sequence.
        self.decode_blocks = self.profiles[-1].ranges[io.BLOCK_TABLES][2][1] if self.kv_names else None

    def new_context(self, profile: int, shapes: dict[str, tuple]):
        """An execution context on `profile` with these input shapes (tensor addresses are the
        caller's to bind), drawing on the shared activation buffer where this TensorRT allows.
        Several contexts may select one profile: profile sharing is always on since TensorRT 10.0
        (PreviewFeature.PROFILE_SHARING_0806, deprecated there as the fixed default)."""
        shared = self.scratch is not None
        context = self.engine.create_execution_context(allocation_strategy(self.trt, shared))
        if context is not None and shared:
            context.set_device_memory(self.scratch.ptr, self.scratch.nbytes)
        if context is None:
            raise TensorRTRuntimeError(
                "TensorRT could not create an execution context (out of device memory? see its log above)"
            )
        try:
            ok = context.set_optimization_profile_async(profile, self.stream.ptr)
        except RuntimeError as error:  # the binding raises where the C++ call returns false
            raise TensorRTRuntimeError(f"TensorRT refused optimization profile {profile}: {error}") from None
        _check(ok, f"refused optimization profile {profile}")
        for name, shape in shapes.items():
            _check(
                context.set_input_shape(name, shape),
                f"refused shape {shape} for input {name} (profile {profile})",
            )
        return context

    def create_kv_pool(self, spec: KVPoolSpec) -> KVPool:
        """The pool in device memory, bound as the KV inputs of every context from now on."""
        from runtime.engines.device_kv_pool import DeviceKVPool

        most = min(runner.ranges[self.kv_names[0]][2][0] for runner in self.profiles)
        if spec.num_blocks > most:
            raise TensorRTRuntimeError(
                f"a KV pool of {spec.num_blocks} blocks exceeds the {most} this plan was built for; "
                "serve with fewer --kv-blocks, or rebuild with a larger --max-batch or --max-seq-len"
            )
        self.pool = DeviceKVPool(spec, self.device)
        for runner in self.profiles:
            runner.bind_pool(self.pool)
        return self.pool

    def _runner(self, feeds: dict[str, np.ndarray], shapes: dict[str, tuple], decode: bool) -> ProfileRunner:
        order = [self.profiles[1], self.profiles[0]] if decode else self.profiles
        for runner in order:
            if runner.fits(shapes):
                return runner
        raise RuntimeUserError(
            f"inputs {shapes} fit none of the engine's optimization profiles "
            f"({'; '.join(r.describe() for r in self.profiles)}); rebuild with larger limits"
        )

    def run(
        self, feeds: dict[str, np.ndarray], outputs: list[str], into: dict[str, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """An engine without KV inputs (an encoder): host arrays in, host arrays out."""
        if self.kv_names or into:
            raise TensorRTRuntimeError("a TensorRT decoder runs through run_step, with its device KV pool")
        shapes = {name: feeds[name].shape for name in self.inputs}
        cuda.set_device(self.device)
        return self._runner(feeds, shapes, decode=False).run(feeds, outputs)

    def run_step(
        self, feeds: dict[str, np.ndarray], pool: KVPool, slots: SlotMapping, output: str = io.LOGITS
    ) -> np.ndarray:
        if pool is not self.pool:
            raise TensorRTRuntimeError("run_step takes the KV pool this engine created (create_kv_pool)")
        cuda.set_device(self.device)  # stages on other devices may have run on this thread
        decode = feeds[io.POSITION_IDS].shape[-1] == 1 and len(self.profiles) > 1
        if decode:
            feeds = {**feeds, io.BLOCK_TABLES: pad_block_tables(feeds[io.BLOCK_TABLES], self.decode_blocks)}
        shapes = {name: feeds[name].shape for name in self.inputs if name not in self.kv_names}
        shapes |= {name: pool.layer_shape() for name in self.kv_names}
        return self._runner(feeds, shapes, decode).run_step(feeds, shapes, slots, output)

    def close(self) -> None:
        for runner in self.profiles:
            runner.close()  # drops the contexts before the memory they use goes
        if self.scratch is not None:
            self.scratch.close()
        self.stream.close()


def _activation_buffer(engine) -> cuda.DeviceBuffer | None:
    """One device buffer big enough for any context of `engine` on any profile (the `_v2` size
    queries and `set_device_memory(ptr, size)` date from TensorRT 10.1). None on TensorRT 10.0:
    there each context allocates its own activation memory."""
    if not hasattr(engine, "get_device_memory_size_for_profile_v2"):
        return None
    sizes = [engine.get_device_memory_size_for_profile_v2(i) for i in range(engine.num_optimization_profiles)]
    return cuda.DeviceBuffer(max([int(engine.device_memory_size_v2), *map(int, sizes)]))


class ProfileRunner:
    """One optimization profile: buffers sized for its max shapes (logits: see first_output_shape),
    allocated once so tensor addresses stay put and CUDA graphs stay valid; a context for plain
    runs, and with CUDA graphs one more context per captured graph, bound to the same buffers."""

    def __init__(self, owner: TensorRTEngine, index: int, cuda_graphs: bool) -> None:
        self.owner, self.index, self.cuda_graphs = owner, index, cuda_graphs
        engine = owner.engine
        self.ranges = {n: [tuple(s) for s in engine.get_tensor_profile_shape(n, index)] for n in owner.inputs}
        self.context = owner.new_context(index, {n: high for n, (_, _, high) in self.ranges.items()})
        # The KV inputs are the pool's slabs (bind_pool); every other tensor gets its own buffer.
        shapes = {n: self.ranges[n][2] for n in owner.inputs if n not in owner.kv_names}
        shapes |= {n: first_output_shape(n, tuple(self.context.get_tensor_shape(n))) for n in owner.outputs}
        sizes = {n: int(np.prod(shape)) * owner.dtypes[n].itemsize for n, shape in shapes.items()}
        self.device = {n: cuda.DeviceBuffer(size) for n, size in sizes.items()}
        self.staging = {n: cuda.PinnedArray(size) for n, size in sizes.items()}
        self.kv_addresses: dict[str, int] = {}
        if owner.kv_names:  # the slot mapping [4, T]: at most one slot per new token of the profile
            tokens = io.INPUT_IDS if io.INPUT_IDS in self.ranges else io.HIDDEN_IN  # a later stage's
            batch, seq = self.ranges[tokens][2][:2]
            self.slots = cuda.DeviceBuffer(4 * batch * seq * 8)
            self.slots_staging = cuda.PinnedArray(4 * batch * seq * 8)
        self._bind(self.context)
        self.graphs: dict[tuple, _Graph] = {}

    def bind_pool(self, pool) -> None:
        self.kv_addresses = {name: ptr for name, (ptr, _) in pool.feeds().items()}
        self._drop_graphs()  # captured with other addresses
        self._bind(self.context)

    def _bind(self, context) -> None:
        addresses = {name: buffer.ptr for name, buffer in self.device.items()} | self.kv_addresses
        for name, address in addresses.items():
            _check(context.set_tensor_address(name, address), f"refused the device address of tensor {name}")

    def describe(self) -> str:
        return f"profile {self.index}: " + ", ".join(
            f"{n} {lo}–{hi}" for n, (lo, _, hi) in self.ranges.items()
        )

    def fits(self, shapes: dict[str, tuple]) -> bool:
        for name, (low, _, high) in self.ranges.items():
            shape = shapes[name]
            if len(shape) != len(low) or any(
                not a <= s <= b for a, s, b in zip(low, shape, high, strict=True)
            ):
                return False
        return True

    def _upload(self, feeds: dict[str, np.ndarray]) -> dict[str, tuple]:
        """Copy every input but the KV pool to its device buffer; the input shapes."""
        owner, shapes = self.owner, {}
        for name in owner.inputs:
            if name in owner.kv_names:
                continue
            if isinstance(feeds[name], DeviceTensor):  # the previous stage's hidden states, on its GPU
                self._receive(name, feeds[name])
                shapes[name] = feeds[name].shape
                continue
            array = np.ascontiguousarray(feeds[name], dtype=owner.dtypes[name])
            stage = self.staging[name].view(array.dtype, array.shape)
            stage[...] = array
            cuda.copy_to_device(self.device[name].ptr, stage, owner.stream)
            shapes[name] = array.shape
        return shapes

    def _receive(self, name: str, tensor: DeviceTensor) -> None:
        owner = self.owner
        if np.dtype(tensor.dtype) != owner.dtypes[name]:
            raise TensorRTRuntimeError(
                f"{name} arrives as {tensor.dtype}, this plan takes {owner.dtypes[name]}"
            )
        cuda.copy_peer(
            self.device[name].ptr, owner.device, tensor.ptr, tensor.device, tensor.nbytes, owner.stream
        )

    def _execute(self, shapes: dict[str, tuple], scatter_tokens: int | None):
        """Run the plan (and the K/V scatter of `scatter_tokens` tokens) for these input shapes, as
        one CUDA graph where graphs are on; the context whose output shapes are now valid."""
        stream = self.owner.stream
        if self.cuda_graphs:
            key = (tuple(shapes.values()), scatter_tokens)
            entry = self.graphs.get(key) or self._capture(key, shapes, scatter_tokens)
            entry.graph.launch(stream)
            return entry.context
        context = self.context
        for name, shape in shapes.items():
            _check(
                context.set_input_shape(name, shape),
                f"refused shape {shape} for input {name} (profile {self.index})",
            )
        self._fit_outputs(context)
        self._enqueue_step(context, scatter_tokens)
        return context

    def _enqueue_step(self, context, scatter_tokens: int | None) -> None:
        stream = self.owner.stream
        _enqueue(context, stream)
        if scatter_tokens:
            self.owner.pool.scatter(
                self.device[io.NEW_KV].ptr,
                tuple(context.get_tensor_shape(io.NEW_KV)),
                self.slots.ptr,
                scatter_tokens,
                stream.ptr,
            )

    def _download(self, context, outputs: list[str]) -> list[np.ndarray]:
        owner, stream = self.owner, self.owner.stream
        results = []
        for name in outputs:
            shape = tuple(context.get_tensor_shape(name))
            host = self.staging[name].view(owner.dtypes[name], shape)
            cuda.copy_to_host(host, self.device[name].ptr, stream)
            results.append(host)
        stream.synchronize()
        return [np.array(r) for r in results]  # staging is reused by the next call

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        context = self._execute(self._upload(feeds), scatter_tokens=None)
        return self._download(context, outputs)

    def run_step(
        self, feeds: dict[str, np.ndarray], shapes: dict[str, tuple], slots: SlotMapping, output: str
    ) -> np.ndarray:
        self._upload(feeds)
        mapping = slots.as_array()
        stage = self.slots_staging.view(np.int64, mapping.shape)
        stage[...] = mapping
        cuda.copy_to_device(self.slots.ptr, stage, self.owner.stream)
        context = self._execute({n: shapes[n] for n in self.owner.inputs}, scatter_tokens=len(slots))
        if output == io.HIDDEN_OUT:  # stays on this GPU: the next stage copies it device to device
            self.owner.stream.synchronize()  # written before another stream reads it
            shape = tuple(context.get_tensor_shape(output))
            return DeviceTensor(self.device[output].ptr, shape, self.owner.dtypes[output], self.owner.device)
        return self._download(context, [output])[0]

    def _capture(self, key: tuple, shapes: dict[str, tuple], scatter_tokens: int | None) -> _Graph:
        """A graph on a context of its own, whose shapes never change after capture: the plan and
        the K/V scatter, which reads the slot mapping from the buffer `run_step` refreshes."""
        stream = self.owner.stream
        context = self.owner.new_context(self.index, shapes)
        self._fit_outputs(context)
        self._bind(context)
        # One plain run first: TensorRT performs deferred shape-dependent setup on a context's
        # first enqueue, which must not land inside the capture. Its K/V go where the captured
        # run will write them again, so running it is harmless.
        self._enqueue_step(context, scatter_tokens)
        stream.synchronize()
        graph = cuda.CudaGraph.capture(stream, lambda: self._enqueue_step(context, scatter_tokens))
        self.graphs[key] = entry = _Graph(context, graph)
        return entry

    def _fit_outputs(self, context) -> None:
        """Grow any output buffer too small for `context`'s current shapes (logits when a call asks
        for more positions than one per sequence). New addresses invalidate the captured graphs,
        so they are dropped (each is recaptured on its next use)."""
        for name in self.owner.outputs:
            need = int(np.prod(context.get_tensor_shape(name))) * self.owner.dtypes[name].itemsize
            if need <= self.device[name].nbytes:
                continue
            self._drop_graphs()
            self.device[name].close()
            self.staging[name].close()
            self.device[name], self.staging[name] = cuda.DeviceBuffer(need), cuda.PinnedArray(need)
            self._bind(self.context)

    def _drop_graphs(self) -> None:
        for entry in self.graphs.values():
            entry.graph.close()
        self.graphs.clear()

    def close(self) -> None:
        self._drop_graphs()
        self.context = None
        buffers = [*self.device.values(), *self.staging.values()]
        if self.owner.kv_names:
            buffers += [self.slots, self.slots_staging]
        for buffer in buffers:
            buffer.close()
