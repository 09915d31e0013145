"""A thin layer over cuda-python's CUDA runtime bindings: streams, device and pinned host memory,
copies, and CUDA graph capture. Imported only by the TensorRT engine (cuda-python is absent here).

cuda-python rather than pycuda: it is NVIDIA's own binding, the one TensorRT's Python samples use,
it maps the CUDA runtime API one to one (stream capture, graph instantiation and launch included),
ships wheels (pycuda compiles against a local CUDA toolkit), and works on the primary context that
TensorRT uses, with no context juggling. Every call returns (error, *values); `_ok` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import RuntimeUserError


class CudaError(RuntimeUserError):
    """A CUDA runtime call failed (no device, out of memory, a failed capture…)."""


def _runtime():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError:
            raise CudaError(
                "cuda-python is not installed: pip install 'autoglm-trt[tensorrt]' on a machine with an NVIDIA GPU"
            ) from None
    return runtime


def _ok(result, call: str):
    rt = _runtime()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != rt.cudaError_t.cudaSuccess:
        _, name = rt.cudaGetErrorName(error)
        raise CudaError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"  # CUDA's encoding: 12040 -> 12.4


def device_count() -> int:
    """CUDA devices visible to this process: 0 when a driver is installed and reports none.
    A missing driver, one too old for these bindings, or any other failure raises CudaError
    saying which (not 0: "no GPU" would hide a fixable setup problem)."""
    rt = _runtime()
    try:
        result = rt.cudaGetDeviceCount()
    except RuntimeError as error:  # cuda-python raises when it cannot load libcuda.so.1
        raise CudaError(
            f"no NVIDIA driver could be loaded ({error}): install the NVIDIA driver, or build and serve "
            "with --backend onnxruntime"
        ) from None
    error, *_ = result
    if error == rt.cudaError_t.cudaErrorNoDevice:
        return 0
    if error == rt.cudaError_t.cudaErrorInsufficientDriver:
        _, driver = rt.cudaDriverGetVersion()
        _, runtime = rt.cudaRuntimeGetVersion()
        found = (
            f"the NVIDIA driver supports CUDA {_cuda_version(driver)}" if driver else "no NVIDIA driver found"
        )
        raise CudaError(
            f"{found}, but cuda-python here is built for CUDA {_cuda_version(runtime)}: install the "
            "cuda-python major the driver supports (the tensorrt extra pins 12.x, which needs driver "
            "≥ 525; 13.x needs ≥ 580) or upgrade the driver"
        )
    return int(_ok(result, "cudaGetDeviceCount"))


def set_device(device: int) -> None:
    """Make `device` this thread's current CUDA device: where the next allocations, streams and
    launches go (a pipeline stage's engine calls it before its work)."""
    _ok(_runtime().cudaSetDevice(device), "cudaSetDevice")


def compute_capability(device: int = 0) -> str:
    """ "8.9" for an L4, "9.0" for an H100: what a TensorRT plan is tied to."""
    rt = _runtime()
    attr = rt.cudaDeviceAttr
    major = _ok(
        rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute"
    )
    minor = _ok(
        rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute"
    )
    return f"{major}.{minor}"


class Stream:
    """A non-blocking stream (capture is not allowed on the legacy default stream)."""

    def __init__(self) -> None:
        rt = _runtime()
        self.handle = _ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        _ok(_runtime().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            _runtime().cudaStreamDestroy(self.handle)
            self.handle = None


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(_ok(_runtime().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes)"))

    def close(self) -> None:
        if self.ptr:
            _runtime().cudaFree(self.ptr)
            self.ptr = 0


class PinnedArray:
    """Page-locked host memory viewed as a numpy array: async copies need it, and copies captured
    into a CUDA graph must not touch pageable memory."""

    def __init__(self, nbytes: int) -> None:
        import ctypes

        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(_ok(_runtime().cudaMallocHost(self.nbytes), "cudaMallocHost"))
        self.bytes = np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self.ptr))

    def view(self, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape))
        return self.bytes[: count * np.dtype(dtype).itemsize].view(dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            _runtime().cudaFreeHost(self.ptr)
            self.ptr = 0


def copy_to_device(dst: int, src: np.ndarray, stream: Stream) -> None:
    rt = _runtime()
    kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    _ok(rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream.handle), "cudaMemcpyAsync H2D")


def copy_to_host(dst: np.ndarray, src: int, stream: Stream) -> None:
    rt = _runtime()
    kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
    _ok(rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream.handle), "cudaMemcpyAsync D2H")


def copy_peer(dst: int, dst_device: int, src: int, src_device: int, nbytes: int, stream: Stream) -> None:
    """Device to device, across GPUs too (cudaMemcpyPeerAsync: over NVLink or PCIe peer access
    where the GPUs have it, staged by the driver otherwise)."""
    rt = _runtime()
    _ok(
        rt.cudaMemcpyPeerAsync(dst, dst_device, src, src_device, nbytes, stream.handle), "cudaMemcpyPeerAsync"
    )


@dataclass
class CudaGraph:
    """Work captured from a stream once (cudaStreamBeginCapture/EndCapture), replayed by launch."""

    graph: object
    exec: object

    @classmethod
    def capture(cls, stream: Stream, work) -> CudaGraph:
        """Capture what `work()` enqueues on `stream`; `work` raises if its own calls fail."""
        rt = _runtime()
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _ok(rt.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            work()
        except BaseException:
            # End the capture so the stream is usable again, unchecked: an invalidated capture
            # reports its own error here, which must not hide the one being raised.
            _, graph = rt.cudaStreamEndCapture(stream.handle)
            if graph is not None and int(graph):
                rt.cudaGraphDestroy(graph)
            raise
        graph = _ok(rt.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        try:
            # WithFlags: one signature across cuda-python releases (cudaGraphInstantiate's changed in 12).
            exec_ = _ok(rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiateWithFlags")
        except CudaError:
            rt.cudaGraphDestroy(graph)
            raise
        return cls(graph, exec_)

    def launch(self, stream: Stream) -> None:
        _ok(_runtime().cudaGraphLaunch(self.exec, stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        rt = _runtime()
        rt.cudaGraphExecDestroy(self.exec)
        rt.cudaGraphDestroy(self.graph)
