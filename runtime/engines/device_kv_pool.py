"""A KV pool in GPU memory, for the TensorRT engine and ONNX Runtime with CUDA (CuPy: absent here).

One device allocation [L, 2, NB, …] holds every layer's K and V; each layer's slab is contiguous,
so engines with per-layer KV inputs bind `layer_ptr(i, j)` and those taking the pool whole bind
`ptr`. The allocation is made once and never moves, so every optimization profile, execution
context and captured CUDA graph reads the same addresses.

New K/V are written by one kernel launch: for each new token t, its K and V rows of every layer
are copied from the engine's `new_kv` output [L, 2, B, S, KVH, D] at (rows[t], cols[t]) into the
pool at (blocks[t], offsets[t]). The kernel allocates nothing and never synchronizes, so it can be
captured in the same CUDA graph as the engine call: the slot mapping then lives in a device buffer
whose contents are refreshed before each launch (`upload_slots`).
"""

from __future__ import annotations

import numpy as np

from runtime import decoder_io as io
from runtime.errors import RuntimeUserError
from runtime.kv.pool import KVPool, KVPoolSpec, SlotMapping

SCATTER_SOURCE = r"""
extern "C" __global__ void scatter_kv(
    ITEM* pool, const ITEM* new_kv, const long long* slots, const int tokens,
    const int layers2, const int batch, const int seq, const int heads, const int dim,
    const int blocks, const int block_size)
{
    // slots: [4, tokens] = rows, cols, blocks, offsets. One thread per copied element.
    const long long n = (long long)tokens * layers2 * heads * dim;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (long long)gridDim.x * blockDim.x) {
        const int d = e % dim;
        long long rest = e / dim;
        const int h = rest % heads;
        rest /= heads;
        const int lk = rest % layers2;  // layer * 2 + (0 for K, 1 for V)
        const int t = rest / layers2;
        const long long row = slots[t], col = slots[tokens + t];
        const long long block = slots[2 * tokens + t], offset = slots[3 * tokens + t];
        const long long src = (((lk * (long long)batch + row) * seq + col) * heads + h) * dim + d;
        const long long dst = (((lk * (long long)blocks + block) * block_size + offset) * heads + h) * dim + d;
        pool[dst] = new_kv[src];
    }
}
"""
ITEM_TYPES = {2: "unsigned short", 4: "unsigned int"}  # copies are bitwise: fp16/bf16, fp32
THREADS = 256


def _cupy():
    try:
        import cupy
    except ImportError:
        raise RuntimeUserError(
            "a device KV pool needs CuPy: pip install 'autoglm-trt[tensorrt]' on a machine with an "
            "NVIDIA GPU, or serve with --backend onnxruntime on the CPU"
        ) from None
    return cupy


class DeviceKVPool(KVPool):
    def __init__(self, spec: KVPoolSpec, device: int = 0) -> None:
        """The pool on CUDA device `device` (a pipeline stage's, `--devices`); every launch and
        copy below runs there."""
        cp = _cupy()
        itemsize = np.dtype(spec.dtype).itemsize
        if itemsize not in ITEM_TYPES:
            raise RuntimeUserError(f"a device KV pool holds 2- or 4-byte values, not {np.dtype(spec.dtype)}")
        self.spec, self.device = spec, device
        with cp.cuda.Device(device):
            try:
                self.array = cp.zeros(spec.shape, spec.dtype)
            except cp.cuda.memory.OutOfMemoryError:
                raise RuntimeUserError(
                    f"the KV pool ({spec.nbytes / 2**30:.2f} GiB, {spec.num_blocks} blocks) does not fit "
                    f"in the memory of GPU {device}; serve with fewer --kv-blocks"
                ) from None
            source = SCATTER_SOURCE.replace("ITEM", ITEM_TYPES[itemsize])
            self._kernel = cp.RawKernel(source, "scatter_kv")
            self._kernel.compile()  # now, not inside a CUDA graph capture
            self._slots = cp.zeros(0, np.int64)

    def layer_ptr(self, layer: int, kv: int) -> int:
        return int(self.array[layer, kv].data.ptr)

    def layer_shape(self) -> tuple[int, ...]:
        return self.spec.shape[2:]  # [NB, bs, KVH, D]

    def feeds(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Device addresses and shapes to bind: {name: (pointer, shape)}."""
        names = io.kv_input_names(self.spec.num_layers)
        return {name: (self.layer_ptr(i // 2, i % 2), self.layer_shape()) for i, name in enumerate(names)}

    def upload_slots(self, slots: SlotMapping, stream_ptr: int = 0):
        """The mapping as a device int64 [4, T] array, in a buffer reused across calls; copied on
        `stream_ptr`. (A captured graph reads a fixed buffer of its own instead.)"""
        cp = _cupy()
        host = slots.as_array().ravel()
        with cp.cuda.Device(self.device), cp.cuda.ExternalStream(stream_ptr):
            if self._slots.size < host.size:
                self._slots = cp.empty(host.size, np.int64)
            device = self._slots[: host.size]
            device.set(host, stream=cp.cuda.get_current_stream())
        return device

    def scatter(self, new_kv_ptr: int, new_kv_shape: tuple, slots_ptr: int, tokens: int, stream_ptr: int = 0):
        """Launch the copy of `tokens` tokens' K/V from `new_kv` (device, [L, 2, B, S, KVH, D], the
        pool's dtype) into the pool; asynchronous on `stream_ptr`, capturable."""
        cp = _cupy()
        layers, two, batch, seq, heads, dim = new_kv_shape
        spec = self.spec
        grid = max(1, min(65535, -(-tokens * layers * two * heads * dim // THREADS)))
        itemsize = np.dtype(spec.dtype).itemsize
        new_kv_bytes = layers * two * batch * seq * heads * dim * itemsize
        args = (
            self.array,
            cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(new_kv_ptr, new_kv_bytes, self), 0),
            cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(slots_ptr, 4 * tokens * 8, self), 0),
            np.int32(tokens),
            np.int32(layers * two),
            np.int32(batch),
            np.int32(seq),
            np.int32(heads),
            np.int32(dim),
            np.int32(spec.num_blocks),
            np.int32(spec.block_size),
        )
        with cp.cuda.Device(self.device), cp.cuda.ExternalStream(stream_ptr):
            self._kernel((grid,), (THREADS,), args)

    def receive(self, tensor):
        """A copy on this pool's device of `tensor` (a DeviceTensor on another GPU): the hidden
        states a pipeline stage hands to the next, device to device."""
        cp = _cupy()
        with cp.cuda.Device(self.device):
            copy = cp.empty(tensor.shape, tensor.dtype)
            cp.cuda.runtime.memcpyPeer(
                int(copy.data.ptr), self.device, tensor.ptr, tensor.device, tensor.nbytes
            )
        return copy

    def synchronize(self, stream_ptr: int = 0) -> None:
        cp = _cupy()
        with cp.cuda.Device(self.device):
            cp.cuda.ExternalStream(stream_ptr).synchronize()

    def write(self, new_kv, slots: SlotMapping) -> None:
        """`new_kv` a CuPy array on the device."""
        self.write_at(int(new_kv.data.ptr), tuple(new_kv.shape), slots)

    def write_at(self, new_kv_ptr: int, new_kv_shape: tuple, slots: SlotMapping) -> None:
        """`write` for a `new_kv` known by its device address and shape (another library's buffer)."""
        if not len(slots):
            return
        device_slots = self.upload_slots(slots)
        self.scatter(new_kv_ptr, new_kv_shape, int(device_slots.data.ptr), len(slots))
