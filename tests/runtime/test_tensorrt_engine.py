"""The TensorRT engine's sizing logic, on the CPU: decode block buckets capped at the profile's
maximum, logits buffers sized for one position per sequence and grown for scoring calls, the
device KV pool bound in place of KV buffers with only the logits copied back, a pipeline stage's
hidden states handed to the next stage's GPU device to device, and the execution-context
allocation strategy. TensorRT and CUDA are absent here: the buffer test runs the
engine's own bookkeeping against stand-ins that only record calls and report shapes (no kernels
run, no results are produced by them)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from runtime import decoder_io as io
from runtime.engines import tensorrt as trt_engine
from runtime.engines.tensorrt_pool import block_bucket, pad_block_tables
from runtime.kv.pool import SlotMapping

VOCAB = 151_552
HIDDEN = 8


@pytest.mark.parametrize(
    ("blocks", "limit", "bucket"),
    [(3, None, 4), (65, 188, 128), (128, 188, 128), (129, 188, 188), (188, 188, 188), (100, 100, 100)],
)
def test_block_bucket_stops_at_the_profile_maximum(blocks, limit, bucket):
    """--max-seq-len 3000 with 16-token blocks: 188 blocks per sequence, not a power of two."""
    assert block_bucket(blocks, limit) == bucket


def test_decode_padding_fits_the_decode_profile():
    batch, blocks, limit = 2, 150, 188
    tables = np.random.default_rng(0).integers(1, 400, (batch, blocks))
    padded = pad_block_tables(tables, limit)
    assert padded.shape == (batch, limit)  # 256 would fit no profile
    np.testing.assert_array_equal(padded[:, :blocks], tables)
    assert not padded[:, blocks:].any()  # the null block, masked by past_lens


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
        batch, seq = (
            self.shapes[io.INPUT_IDS] if io.INPUT_IDS in self.shapes else self.shapes[io.HIDDEN_IN][:2]
        )
        if name == io.HIDDEN_OUT:
            return (batch, seq, HIDDEN)
        if name == io.LOGITS:
            return (*self.shapes[io.LOGIT_INDEX], VOCAB)  # logits only at logit_index's positions
        if name == io.NEW_KV:
            return (2, 2, batch, seq, 1, 4)
        return self.shapes[name]

    def execute_async_v3(self, stream) -> bool:
        self.runs += 1
        return True


def _owner(ranges: dict, kv: list[str]) -> tuple[list[_Context], SimpleNamespace]:
    """The engine a profile runner belongs to: profile ranges, tensor dtypes (fp16 KV), and a
    context factory that records every context it makes."""
    contexts = []

    def new_context(profile, shapes):
        contexts.append(_Context(shapes))
        return contexts[-1]

    owner = SimpleNamespace(
        engine=SimpleNamespace(get_tensor_profile_shape=lambda name, index: ranges[name]),
        inputs=list(ranges),
        kv_names=kv,
        outputs=[io.LOGITS, io.NEW_KV],
        dtypes={
            io.INPUT_IDS: np.dtype(np.int64),
            io.LOGIT_INDEX: np.dtype(np.int64),
            io.LOGITS: np.dtype(np.float32),
            io.NEW_KV: np.dtype(np.float16),
            **{name: np.dtype(np.float16) for name in kv},
        },
        stream=SimpleNamespace(ptr=0, synchronize=lambda: None),
        new_context=new_context,
    )
    return contexts, owner


def test_a_scoring_call_grows_the_logits_buffers(monkeypatch):
    monkeypatch.setattr(trt_engine.cuda, "DeviceBuffer", _Buffer)
    monkeypatch.setattr(trt_engine.cuda, "PinnedArray", _Buffer)
    monkeypatch.setattr(trt_engine.cuda, "copy_to_device", lambda dst, src, stream: None)
    monkeypatch.setattr(trt_engine.cuda, "copy_to_host", lambda dst, src, stream: None)
    ranges = {  # prefill profile: batch 1–8, seq 1–2048, logit positions 1–2048
        io.INPUT_IDS: [(1, 1), (1, 512), (8, 2048)],
        io.LOGIT_INDEX: [(1, 1), (1, 1), (8, 2048)],
    }
    contexts, owner = _owner(ranges, kv=[])
    runner = trt_engine.ProfileRunner(owner, 0, cuda_graphs=False)
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


class _Pool:
    """Stands in for DeviceKVPool: fixed per-layer addresses, and a record of scatter launches."""

    def __init__(self, names: list[str]) -> None:
        self.addresses = {name: 0xA000_0000 + 0x1000 * i for i, name in enumerate(names)}
        self.scatters = []

    def feeds(self):
        return {name: (address, (9, 16, 1, 4)) for name, address in self.addresses.items()}

    def layer_shape(self):
        return (9, 16, 1, 4)

    def scatter(self, new_kv_ptr, new_kv_shape, slots_ptr, tokens, stream_ptr):
        self.scatters.append((new_kv_ptr, new_kv_shape, slots_ptr, tokens))


def test_a_decoder_step_binds_the_device_pool_and_copies_back_only_logits(monkeypatch):
    uploads, downloads = [], []
    monkeypatch.setattr(trt_engine.cuda, "DeviceBuffer", _Buffer)
    monkeypatch.setattr(trt_engine.cuda, "PinnedArray", _Buffer)
    monkeypatch.setattr(
        trt_engine.cuda, "copy_to_device", lambda dst, src, stream: uploads.append((dst, src.copy()))
    )
    monkeypatch.setattr(trt_engine.cuda, "copy_to_host", lambda dst, src, stream: downloads.append(src))
    kv = ["key_cache.0", "value_cache.0"]
    ranges = {
        io.INPUT_IDS: [(1, 1), (4, 1), (4, 1)],
        io.LOGIT_INDEX: [(1, 1), (4, 1), (4, 1)],
        **{name: [(1, 16, 1, 4), (9, 16, 1, 4), (9, 16, 1, 4)] for name in kv},
    }
    contexts, owner = _owner(ranges, kv)
    runner = trt_engine.ProfileRunner(owner, 1, cuda_graphs=False)
    assert not set(kv) & set(runner.device)  # no KV buffers of its own
    pool = _Pool(kv)
    owner.pool = pool
    runner.bind_pool(pool)
    assert all(contexts[0].addresses[name] == pool.addresses[name] for name in kv)

    slots = SlotMapping.build([(np.array([3]), np.array([5])), (np.array([7]), np.array([0]))])
    feeds = {io.INPUT_IDS: np.array([[11], [12]]), io.LOGIT_INDEX: np.zeros((2, 1), np.int64)}
    shapes = {io.INPUT_IDS: (2, 1), io.LOGIT_INDEX: (2, 1), **{name: pool.layer_shape() for name in kv}}
    logits = runner.run_step(feeds, shapes, slots, io.LOGITS)
    assert logits.shape == (2, 1, VOCAB)
    assert downloads == [runner.device[io.LOGITS].ptr]  # new_kv stays on the device
    sent = dict(uploads)
    np.testing.assert_array_equal(sent[runner.slots.ptr], [[0, 1], [0, 0], [3, 7], [5, 0]])
    assert set(sent) == {runner.slots.ptr, runner.device[io.INPUT_IDS].ptr, runner.device[io.LOGIT_INDEX].ptr}
    assert pool.scatters == [(runner.device[io.NEW_KV].ptr, (2, 2, 2, 1, 1, 4), runner.slots.ptr, 2)]


def test_a_pipeline_stage_hands_its_hidden_states_on_device_to_device(monkeypatch):
    """Stage 0 on GPU 0 keeps hidden_out on its device; stage 1 on GPU 1 copies it peer to peer into
    its hidden_in buffer. Nothing of it crosses to the host; only the last stage's logits do."""
    uploads, downloads, peers = [], [], []
    monkeypatch.setattr(trt_engine.cuda, "DeviceBuffer", _Buffer)
    monkeypatch.setattr(trt_engine.cuda, "PinnedArray", _Buffer)
    monkeypatch.setattr(trt_engine.cuda, "copy_to_device", lambda dst, src, stream: uploads.append(dst))
    monkeypatch.setattr(trt_engine.cuda, "copy_to_host", lambda dst, src, stream: downloads.append(src))
    monkeypatch.setattr(trt_engine.cuda, "copy_peer", lambda *args: peers.append(args[:5]))
    kv = ["key_cache.0", "value_cache.0"]
    pool_ranges = {name: [(1, 16, 1, 4), (9, 16, 1, 4), (9, 16, 1, 4)] for name in kv}
    rows = [(1, 1), (4, 1), (4, 1)]

    def stage(ranges, outputs, device):
        _, owner = _owner({**ranges, **pool_ranges}, kv)
        owner.outputs, owner.device = outputs, device
        owner.dtypes |= {io.HIDDEN_OUT: np.dtype(np.float16), io.HIDDEN_IN: np.dtype(np.float16)}
        owner.pool = _Pool(kv)
        runner = trt_engine.ProfileRunner(owner, 1, cuda_graphs=False)
        runner.bind_pool(owner.pool)
        return runner

    first = stage({io.INPUT_IDS: rows}, [io.HIDDEN_OUT, io.NEW_KV], device=0)
    last = stage({io.HIDDEN_IN: [(1, 1, HIDDEN), (4, 1, HIDDEN), (4, 1, HIDDEN)], io.LOGIT_INDEX: rows},
                 [io.LOGITS, io.NEW_KV], device=1)  # fmt: skip
    slots = SlotMapping.build([(np.array([3]), np.array([5])), (np.array([7]), np.array([0]))])
    pool_shapes = {name: (9, 16, 1, 4) for name in kv}

    hidden = first.run_step({io.INPUT_IDS: np.array([[11], [12]])}, {io.INPUT_IDS: (2, 1), **pool_shapes},
                            slots, io.HIDDEN_OUT)  # fmt: skip
    assert isinstance(hidden, trt_engine.DeviceTensor)
    assert (hidden.ptr, hidden.shape, hidden.device) == (first.device[io.HIDDEN_OUT].ptr, (2, 1, HIDDEN), 0)
    assert downloads == []

    feeds = {io.HIDDEN_IN: hidden, io.LOGIT_INDEX: np.zeros((2, 1), np.int64)}
    shapes = {io.HIDDEN_IN: hidden.shape, io.LOGIT_INDEX: (2, 1), **pool_shapes}
    logits = last.run_step(feeds, shapes, slots, io.LOGITS)
    assert logits.shape == (2, 1, VOCAB)
    assert peers == [(last.device[io.HIDDEN_IN].ptr, 1, hidden.ptr, 0, 2 * HIDDEN * 2)]
    assert last.device[io.HIDDEN_IN].ptr not in uploads
    assert downloads == [last.device[io.LOGITS].ptr]
    assert [len(p.scatters) for p in (first.owner.pool, last.owner.pool)] == [1, 1]  # each stage its pool
