"""The KV pool's memory (runtime/kv/pool.py): the slot mapping from the block manager, the host
pool's in-place scatter against a token-by-token reference, its per-layer views, and the pool sizing of LLMEngine. The device pool (CuPy, a GPU) is checked against the
host pool where a GPU is present; here it is skipped."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import decoder_io as io
from runtime.kv import KVCacheManager
from runtime.kv.pool import HostKVPool, KVPoolSpec, SlotMapping

L, KVH, D, BS, NB = 3, 2, 4, 4, 12


def _spec(dtype=np.float32) -> KVPoolSpec:
    return KVPoolSpec(L, NB, BS, KVH, D, np.dtype(dtype))


def _call(manager: KVCacheManager):
    """Two sequences: 'a' adds 5 tokens after 6 cached ones (crossing a block boundary), 'b' adds
    1 token after 3. Returns the slot mapping and a new_kv [L, 2, B, S, KVH, D] with S = 5."""
    manager.allocate_slots("a", 11)
    manager.allocate_slots("b", 4)
    per_row = [manager.slot_mapping("a", 6, 5), manager.slot_mapping("b", 3, 1)]
    new_kv = np.random.default_rng(0).standard_normal((L, 2, 2, 5, KVH, D)).astype(np.float32)
    return SlotMapping.build(per_row), new_kv


def _reference_write(pool: np.ndarray, manager, new_kv) -> None:
    for row, (rid, past, count) in enumerate([("a", 6, 5), ("b", 3, 1)]):
        table = manager.block_table(rid)
        for col in range(count):
            position = past + col
            block, offset = table[position // BS], position % BS
            for layer in range(L):
                for kv in range(2):
                    pool[layer, kv, block, offset] = new_kv[layer, kv, row, col]  # [KVH, D]


def test_slot_mapping_names_each_new_token():
    manager = KVCacheManager(NB, BS, enable_prefix_caching=False)
    slots, _ = _call(manager)
    a, b = manager.block_table("a"), manager.block_table("b")
    np.testing.assert_array_equal(slots.rows, [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(slots.cols, [0, 1, 2, 3, 4, 0])
    np.testing.assert_array_equal(slots.blocks, [a[1], a[1], a[2], a[2], a[2], b[0]])
    np.testing.assert_array_equal(slots.offsets, [2, 3, 0, 1, 2, 3])
    assert len(slots) == 6 and slots.blocks.dtype == np.int64
    as_array = slots.as_array()  # what the device kernel reads: [4, T] int64
    assert as_array.dtype == np.int64
    np.testing.assert_array_equal(as_array, [slots.rows, slots.cols, slots.blocks, slots.offsets])


def test_host_pool_scatter_matches_token_by_token_writes():
    manager = KVCacheManager(NB, BS, enable_prefix_caching=False)
    slots, new_kv = _call(manager)
    pool = HostKVPool(_spec())
    pool.array[...] = 7.0  # what was there before must stay wherever no token goes
    expected = pool.array.copy()
    pool.write(new_kv, slots)
    _reference_write(expected, manager, new_kv)
    np.testing.assert_array_equal(pool.array, expected)
    assert pool.array.shape == _spec().shape
    # Padding columns of the shorter row (b's cols 1..4) are never written.
    assert (pool.array == 7.0).sum() == pool.array.size - 6 * L * 2 * KVH * D


def test_host_pool_feeds_are_views_of_the_pool():
    pool = HostKVPool(_spec())
    per_layer = pool.feeds()
    assert list(per_layer) == io.kv_input_names(L)
    for i, array in enumerate(per_layer.values()):
        assert np.shares_memory(array, pool.array) and array.flags.c_contiguous
        assert array.shape == (NB, BS, KVH, D)
        array[1, 1] = i + 1
    second_token = pool.array[:, :, 1, 1, 0]
    assert second_token[..., 0].ravel().tolist() == list(range(1, 2 * L + 1))


def test_pool_size_in_bytes():
    spec = KVPoolSpec(40, 1 + 8 * 128, 16, 2, 128, np.dtype(np.float16))
    # GLM-4.1V-9B-class: 40 layers, 2 KV heads of 128, fp16; 8 sequences of 2048 tokens.
    assert spec.nbytes == 40 * 2 * 1025 * 16 * 2 * 128 * 2 == 671_744_000


def test_llm_engine_sizes_its_pool_from_the_manifest(glm4v_tiny_engines):
    from runtime.llm_engine import LLMEngine

    engine = LLMEngine(glm4v_tiny_engines, "fp32", threads=1)
    limits = engine.limits
    per_sequence = -(-limits.max_seq_len // limits.block_size)
    assert engine.kv.num_blocks == 1 + limits.max_batch * per_sequence
    assert engine.scheduler.config.max_batch == limits.max_batch
    spec = engine.decoder.pool.spec
    assert (spec.num_layers, spec.num_blocks, spec.block_size) == (
        limits.num_layers,
        engine.kv.num_blocks,
        limits.block_size,
    )
    small = LLMEngine(glm4v_tiny_engines, "fp32", threads=1, max_batch=2)
    assert small.kv.num_blocks == 1 + 2 * per_sequence and small.scheduler.config.max_batch == 2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_device_pool_scatter_matches_the_host_pool(dtype):
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA device")
    from runtime.engines.device_kv_pool import DeviceKVPool

    manager = KVCacheManager(NB, BS, enable_prefix_caching=False)
    slots, new_kv = _call(manager)
    new_kv = new_kv.astype(dtype)
    host, device = HostKVPool(_spec(dtype)), DeviceKVPool(_spec(dtype))
    host.write(new_kv, slots)
    device.write(cupy.asarray(new_kv), slots)
    device.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(device.array), host.array)
    ptr, shape = device.feeds()["value_cache.1"]
    assert ptr == device.array[1, 1].data.ptr and shape == (NB, BS, KVH, D)
