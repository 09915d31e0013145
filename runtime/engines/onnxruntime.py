"""ONNX Runtime engine: the CPU execution provider here; CUDA where onnxruntime-gpu is installed.

On the CPU the KV pool is host memory, bound in place; fused engines read and update their past in
per-sequence slots (runtime/kv/slot_pool.py). With CUDA it is a device pool
(runtime/engines/device_kv_pool.py) bound by address; `new_kv` stays on the device, where it is
scattered into the pool, and only the logits are copied back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime import decoder_io as io
from runtime.engines.base import DeviceTensor, Engine
from runtime.errors import RuntimeUserError
from runtime.kv.pool import KVPool, KVPoolSpec, SlotMapping
from runtime.kv.slot_pool import SlotKVPool

# Model metadata the ORT engine step writes (builder/build/ort_fusion/): whether a call may batch
# several sequences' new tokens (at all, or over a cached past), and what the KV inputs are: absent,
# the paged pool's per-layer slabs; SLOTS, each layer's past in per-sequence slots [B, KVH, S, D]
# that the engine updates in place (runtime/kv/slot_pool.py).
BATCHED_PREFILL_WITH_PAST = "autoglm_trt.batched_prefill_with_past"
BATCHED_PREFILL = "autoglm_trt.batched_prefill"
KV_LAYOUT = "autoglm_trt.kv_layout"
SLOTS = "slots"
# Inputs up to this size are copied into memory the engine keeps bound; larger ones (the KV pool's
# views) are bound where they are. An input that aliases an output written in place is never copied.
COPY_LIMIT = 64 * 1024


class OnnxRuntimeEngine(Engine):
    def __init__(self, path: Path, threads: int = 0, device: int | None = None) -> None:
        """`threads` 0: all cores. ORT's default: idle threads spin a while before they sleep, so a
        decode step's many short kernels do not wait for threads to wake. `device`: the CUDA
        device where onnxruntime-gpu is installed (a pipeline stage's); None: device 0."""
        options = ort.SessionOptions()
        # The saved graph is already fused (EXTENDED); ALL adds this CPU's layout optimizations.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.device = device or 0
        providers: list = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_dtypes = {i.name: np.dtype(ort_type_to_numpy(i.type)) for i in self.session.get_inputs()}
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.batched_prefill_with_past = metadata.get(BATCHED_PREFILL_WITH_PAST, "true") == "true"
        self.batched_prefill = metadata.get(BATCHED_PREFILL, "true") == "true"
        self.kv_slots = metadata.get(KV_LAYOUT) == SLOTS
        self.on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        self._binding: ort.IOBinding | None = None
        self._outputs = {
            o.name: (o.shape, np.dtype(ort_type_to_numpy(o.type))) for o in self.session.get_outputs()
        }
        self._symbols = {}  # each named input dim → the first (input, axis) that carries it
        for i in self.session.get_inputs():
            for axis, dim in enumerate(i.shape):
                if isinstance(dim, str):
                    self._symbols.setdefault(dim, (i.name, axis))

    def run(
        self, feeds: dict[str, np.ndarray], outputs: list[str], into: dict[str, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        # IOBinding reads the caller's arrays in place; session.run() would copy every input,
        # which for the KV pool is the whole cache on every decode step. The binding is kept
        # between calls, with the arrays it points at, and an array rebound only when the caller
        # hands another one: a decode step then binds its few small inputs, not every layer's K/V
        # again (the pools hand the same views while nothing moved; ~0.4 ms for 30 layers).
        # Small inputs (token ids, positions, tables) are new arrays every step; binding one costs
        # 10–50 µs once a step's weights have streamed through the caches, copying it in ~1 µs.
        # So they are copied into buffers of the engine's own, bound once while their shape holds.
        into = into or {}
        binding = self._binding_for(list(feeds), [*outputs, *into])
        for name, feed in feeds.items():
            bound = self._bound.get(name)
            if bound is feed:
                continue
            if name in self._copies and bound.shape == feed.shape and bound.dtype == feed.dtype:
                bound[...] = feed
                continue
            if feed.nbytes <= COPY_LIMIT and not any(np.may_share_memory(feed, a) for a in into.values()):
                array = np.array(feed, order="C")  # the engine's own copy
                self._copies.add(name)
            else:  # bound in place: the feed itself where it is contiguous
                array = np.ascontiguousarray(feed)  # a non-contiguous feed's copy is new each call
                self._copies.discard(name)
            binding.bind_cpu_input(name, array)
            self._bound[name] = array
        results: dict[str, np.ndarray] = {}
        for name in outputs:  # fresh memory for each call's results
            shape = self._output_shape(name, feeds)
            if shape is None:  # ORT allocates it
                binding.bind_output(name)
                continue
            results[name] = np.empty(shape, self._outputs[name][1])
            self._bind_output(binding, name, results[name])
        for name, array in into.items():
            assert array.flags.c_contiguous, "outputs written in place need contiguous memory"
            if self._bound.get(name) is not array:
                self._bind_output(binding, name, array)
                self._bound[name] = array
        self.session.run_with_iobinding(binding)
        if len(results) < len(outputs):  # get_outputs wraps every output, in-place ones too (~1 µs each)
            values = binding.get_outputs()  # in the order the names were first bound
            for name in set(outputs) - set(results):
                results[name] = np.array(values[self._output_order.index(name)].numpy())
        return [results[name] for name in outputs]

    def _output_shape(self, name: str, feeds: dict[str, np.ndarray]) -> tuple[int, ...] | None:
        """An output's shape from its declared dims: fixed, or named as some input's; None where a dim
        is neither (the shape is known only once the graph has run)."""
        shape = []
        for dim in self._outputs[name][0]:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in self._symbols and self._symbols[dim][0] in feeds:
                feed, axis = self._symbols[dim]
                shape.append(np.shape(feeds[feed])[axis])
            else:
                return None
        return tuple(shape)

    @staticmethod
    def _bind_output(binding: ort.IOBinding, name: str, array: np.ndarray) -> None:
        binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)

    def _binding_for(self, inputs: list[str], outputs: list[str]) -> ort.IOBinding:
        """The kept binding, or a new one where a call names other inputs or outputs than the last
        (nothing stale may stay bound)."""
        if self._binding is None or self._names != (set(inputs), set(outputs)):
            self._binding = self.session.io_binding()
            self._names = (set(inputs), set(outputs))
            self._bound: dict[str, np.ndarray] = {}  # what each name points at (kept alive)
            self._copies: set[str] = set()  # inputs bound to the engine's own copies
            self._output_order = outputs
        return self._binding

    def create_kv_pool(self, spec: KVPoolSpec) -> KVPool:
        if self.kv_slots:
            if self.on_gpu:
                raise RuntimeUserError(
                    "this engine keeps K/V in per-sequence slots on the host, which ONNX Runtime's "
                    "CUDA provider does not serve yet; serve it on the CPU, or with --backend tensorrt"
                )
            return SlotKVPool(spec)
        if not self.on_gpu:
            return super().create_kv_pool(spec)
        from runtime.engines.device_kv_pool import DeviceKVPool

        return DeviceKVPool(spec, self.device)

    def run_step(
        self, feeds: dict[str, np.ndarray], pool: KVPool, slots: SlotMapping, output: str = io.LOGITS
    ) -> np.ndarray:
        if not self.on_gpu:
            return super().run_step(feeds, pool, slots, output)
        binding = self.session.io_binding()
        received = []  # hidden states copied from another GPU, alive until the run ends
        for name, value in feeds.items():  # the small inputs: ids, positions, tables, …
            if isinstance(value, DeviceTensor):  # the previous stage's hidden states
                ptr = value.ptr
                if value.device != self.device:
                    received.append(pool.receive(value))
                    ptr = int(received[-1].data.ptr)
                binding.bind_input(name, "cuda", self.device, np.dtype(value.dtype), list(value.shape), ptr)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, (ptr, shape) in pool.feeds().items():
            binding.bind_input(name, "cuda", self.device, np.dtype(pool.spec.dtype), list(shape), ptr)
        on_device = output == io.HIDDEN_OUT  # stays on this GPU for the next stage
        binding.bind_output(output, "cuda" if on_device else "cpu", self.device)
        binding.bind_output(io.NEW_KV, "cuda", self.device)
        self.session.run_with_iobinding(binding)  # synchronizes its stream before returning
        result, new_kv = binding.get_outputs()
        pool.write_at(new_kv.data_ptr(), tuple(new_kv.shape()), slots)
        pool.synchronize()  # the next call reads the pool; new_kv is freed with its OrtValue
        if on_device:
            dtype = np.dtype(ort_type_to_numpy(result.data_type()))
            return DeviceTensor(result.data_ptr(), tuple(result.shape()), dtype, self.device, owner=result)
        return np.array(result.numpy())  # the caller's own: the OrtValue's buffer goes with it


def ort_type_to_numpy(ort_type: str) -> str:
    # ORT reports "tensor(float16)", "tensor(int64)", …; numpy calls float "float32".
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(name, name)
