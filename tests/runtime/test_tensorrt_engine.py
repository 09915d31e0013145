"""The TensorRT engine's sizing logic, on the CPU: decode block buckets capped at the profile's
maximum, logits buffers sized for one position per sequence and grown for scoring calls, and the
execution-context allocation strategy. TensorRT and CUDA are absent here: the buffer test runs the
engine's own bookkeeping against stand-ins that only record calls and report shapes (no kernels
run, no results are produced by them)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from runtime import decoder_io as io
from runtime.engines import tensorrt as trt_engine
from runtime.engines.tensorrt_pool import block_bucket, compact_pool

VOCAB = 151_552


@pytest.mark.parametrize(
    ("blocks", "limit", "bucket"),
    [(3, None, 4), (65, 188, 128), (128, 188, 128), (129, 188, 188), (188, 188, 188), (100, 100, 100)],
)
def test_block_bucket_stops_at_the_profile_maximum(blocks, limit, bucket):
    """--max-seq-len 3000 with 16-token blocks: 188 blocks per sequence, not a power of two."""
    assert block_bucket(blocks, limit) == bucket


def test_decode_padding_fits_the_decode_profile():
    batch, blocks, limit = 2, 150, 188
    rng = np.random.default_rng(0)
    tables = rng.integers(1, 400, (batch, blocks))
    pool = np.arange(400, dtype=np.float32).reshape(400, 1, 1, 1)
    feeds = {io.BLOCK_TABLES: tables, "key_cache.0": pool}
    packed = compact_pool(feeds, ["key_cache.0"], pad_to_bucket=True, max_blocks=limit)
    assert packed[io.BLOCK_TABLES].shape == (batch, limit)  # 256 would fit no profile
    assert packed["key_cache.0"].shape[0] == 1 + batch * limit  # ≤ the profile's 1 + max_batch·limit
    renumbered = packed[io.BLOCK_TABLES][:, :blocks]
    np.testing.assert_array_equal(packed["key_cache.0"][renumbered], pool[tables])


def test_logits_buffers_start_at_one_position_per_sequence():
    # The prefill profile at max shapes: [8, max_seq_len 2048, V] fp32 would be 9.9 GB.
    shape = trt_engine.first_output_shape(io.LOGITS, (8, 2048, VOCAB))
    assert shape == (8, 1, VOCAB)
    assert np.prod(shape) * 4 == 4_849_664  # 4.8 MB
    kv = (28, 2, 8, 2048, 2, 128)
    assert trt_engine.first_output_shape(io.NEW_KV, kv) == kv  # a full prefill writes all of it


def test_contexts_allocate_per_profile_without_a_shared_buffer():
    strategies = SimpleNamespace(STATIC="static", ON_PROFILE_CHANGE="on-profile", USER_MANAGED="user")
    trt = SimpleNamespace(ExecutionContextAllocationStrategy=strategies)
    assert trt_engine.allocation_strategy(trt, shared_buffer=False) == "on-profile"  # TensorRT 10.0
    assert trt_engine.allocation_strategy(trt, shared_buffer=True) == "user"


class _Buffer:
    """Stands in for cuda.DeviceBuffer / cuda.PinnedArray: host bytes, a fresh fake address."""

    addresses = iter(range(0x1000, 1 << 40, 0x1000))

    def __init__(self, nbytes: int) -> None:
        self.nbytes, self.ptr = max(int(nbytes), 1), next(self.addresses)
        self.bytes = np.zeros(self.nbytes, np.uint8)
        self.closed = False

    def view(self, dtype, shape) -> np.ndarray:
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.bytes[:count].view(dtype).reshape(shape)

    def close(self) -> None:
        self.closed = True


class _Context:
    """Records what the engine binds and sets; reports output shapes as the decoder graph's are."""

    def __init__(self, shapes: dict[str, tuple]) -> None:
        self.shapes, self.addresses, self.runs = dict(shapes), {}, 0

    def set_input_shape(self, name, shape) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr) -> bool:
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name) -> tuple:
        batch, seq = self.shapes[io.INPUT_IDS]
        if name == io.LOGITS:
            return (*self.shapes[io.LOGIT_INDEX], VOCAB)  # logits only at logit_index's positions
        if name == io.NEW_KV:
            return (2, 2, batch, seq, 1, 4)
        return self.shapes[name]

    def execute_async_v3(self, stream) -> bool:
        self.runs += 1
        return True


def test_a_scoring_call_grows_the_logits_buffers(monkeypatch):
    monkeypatch.setattr(trt_engine.cuda, "DeviceBuffer", _Buffer)
    monkeypatch.setattr(trt_engine.cuda, "PinnedArray", _Buffer)
    monkeypatch.setattr(trt_engine.cuda, "copy_to_device", lambda dst, src, stream: None)
    monkeypatch.setattr(trt_engine.cuda, "copy_to_host", lambda dst, src, stream: None)
    ranges = {  # prefill profile: batch 1–8, seq 1–2048, logit positions 1–2048
        io.INPUT_IDS: [(1, 1), (1, 512), (8, 2048)],
        io.LOGIT_INDEX: [(1, 1), (1, 1), (8, 2048)],
    }
    contexts = []

    def new_context(profile, shapes):
        contexts.append(_Context(shapes))
        return contexts[-1]

    owner = SimpleNamespace(
        engine=SimpleNamespace(get_tensor_profile_shape=lambda name, index: ranges[name]),
        inputs=list(ranges),
        outputs=[io.LOGITS, io.NEW_KV],
        dtypes={
            io.INPUT_IDS: np.dtype(np.int64),
            io.LOGIT_INDEX: np.dtype(np.int64),
            io.LOGITS: np.dtype(np.float32),
            io.NEW_KV: np.dtype(np.float16),
        },
        stream=SimpleNamespace(ptr=0, synchronize=lambda: None),
        new_context=new_context,
    )
    runner = trt_engine._ProfileRunner(owner, 0, cuda_graphs=False)
    first = runner.device[io.LOGITS]
    assert first.nbytes == 8 * 1 * VOCAB * 4
    assert runner.staging[io.LOGITS].nbytes == first.nbytes  # pinned memory: the same saving

    generate = {io.INPUT_IDS: np.zeros((8, 300), np.int64), io.LOGIT_INDEX: np.full((8, 1), 299)}
    (logits,) = runner.run(generate, [io.LOGITS])
    assert logits.shape == (8, 1, VOCAB) and runner.device[io.LOGITS] is first

    score = {io.INPUT_IDS: np.zeros((1, 1500), np.int64), io.LOGIT_INDEX: np.arange(1500)[None]}
    (logits,) = runner.run(score, [io.LOGITS])
    grown = runner.device[io.LOGITS]
    assert logits.shape == (1, 1500, VOCAB) and grown.nbytes == 1500 * VOCAB * 4
    assert first.closed and runner.staging[io.LOGITS].nbytes == grown.nbytes
    assert contexts[0].addresses[io.LOGITS] == grown.ptr  # rebound before the run
    assert contexts[0].runs == 2
