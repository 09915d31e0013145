"""KV block bookkeeping: free queue, pool, prefix hashing and the per-request manager."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runtime.kv import (
    NULL_BLOCK_ID,
    BlockPool,
    FreeBlockQueue,
    KVBlock,
    KVCacheManager,
    hash_block_tokens,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def check_pool(pool: BlockPool) -> None:
    """free + in use == num_blocks - 1, and every block is in exactly one consistent state."""
    queued = list(pool.free_queue)
    assert len(queued) == pool.num_free_blocks
    queued_ids = {b.block_id for b in queued}
    assert len(queued_ids) == len(queued), "a block is in the free queue twice"
    in_use = [b for b in pool.blocks[1:] if b.ref_cnt > 0]
    assert pool.num_free_blocks + len(in_use) == pool.num_blocks - 1
    for b in pool.blocks[1:]:
        assert b.ref_cnt >= 0
        assert (b.block_id in queued_ids) == (b.ref_cnt == 0), b
        assert FreeBlockQueue.contains(b) == (b.ref_cnt == 0), b
    null = pool.blocks[NULL_BLOCK_ID]
    assert null.ref_cnt == 0 and NULL_BLOCK_ID not in queued_ids and null.block_hash is None
    for b in pool.blocks:
        if b.block_hash is not None:
            assert pool.get_cached_block(b.block_hash) is b
    assert pool.usage == pytest.approx(len(in_use) / (pool.num_blocks - 1))


def check(kv: KVCacheManager) -> None:
    check_pool(kv.pool)


def toks(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


# ----------------------------------------------------------------------------- free queue


def test_free_queue_order_and_ops() -> None:
    blocks = [KVBlock(i) for i in range(6)]
    q = FreeBlockQueue(blocks)
    assert [b.block_id for b in q] == [0, 1, 2, 3, 4, 5] and len(q) == 6
    assert q.popleft() is blocks[0]
    q.remove(blocks[3])  # from the middle
    assert [b.block_id for b in q] == [1, 2, 4, 5] and len(q) == 4
    assert not FreeBlockQueue.contains(blocks[3]) and blocks[3].prev_free is None
    q.append(blocks[3])
    q.append(blocks[0])
    assert [b.block_id for b in q] == [1, 2, 4, 5, 3, 0]
    q.remove(blocks[1])  # the head
    q.remove(blocks[0])  # the tail
    assert [b.block_id for b in q] == [2, 4, 5, 3]
    assert [b.block_id for b in q.popleft_n(4)] == [2, 4, 5, 3]
    assert len(q) == 0 and list(q) == []
    with pytest.raises(IndexError):
        q.popleft()
    with pytest.raises(ValueError):
        q.remove(blocks[2])
    q.append(blocks[2])
    with pytest.raises(ValueError):
        q.append(blocks[2])


def test_free_queue_ops_are_constant_time() -> None:
    # A list-backed queue would need ~n^2/2 = 1.25e9 element moves here; linked, it is ~0.1 s.
    n = 50_000
    blocks = [KVBlock(i) for i in range(n)]
    q = FreeBlockQueue(blocks)
    order = list(range(n))
    random.Random(0).shuffle(order)
    t0 = time.perf_counter()
    for i in order:
        q.remove(blocks[i])
        q.append(blocks[i])
    for _ in range(n):
        q.append(q.popleft())
    assert time.perf_counter() - t0 < 3.0
    assert [b.block_id for b in q] == order


# ----------------------------------------------------------------------------- pool


def test_pool_allocate_free_lru_and_null_block() -> None:
    pool = BlockPool(6)
    check_pool(pool)
    assert pool.num_free_blocks == 5 and pool.usage == 0.0
    a = pool.get_new_blocks(3)
    assert a is not None and [b.block_id for b in a] == [1, 2, 3]
    assert all(b.ref_cnt == 1 for b in a)
    check_pool(pool)
    pool.free_blocks(reversed(a))  # tail of the sequence first
    check_pool(pool)
    assert [b.block_id for b in pool.free_queue] == [4, 5, 3, 2, 1]
    b = pool.get_new_blocks(5)
    assert b is not None and NULL_BLOCK_ID not in [x.block_id for x in b]
    assert pool.usage == 1.0
    check_pool(pool)
    with pytest.raises(ValueError, match="null block"):
        BlockPool(1)


def test_pool_exhaustion_returns_none_and_changes_nothing() -> None:
    pool = BlockPool(5)
    held = pool.get_new_blocks(2)
    assert held is not None
    pool.cache_full_block(held[0], 111)
    pool.free_blocks(held)  # block 1 is free but cached
    before = ([b.block_id for b in pool.free_queue], [(b.ref_cnt, b.block_hash) for b in pool.blocks])
    assert pool.get_new_blocks(5) is None
    after = ([b.block_id for b in pool.free_queue], [(b.ref_cnt, b.block_hash) for b in pool.blocks])
    assert before == after and pool.get_cached_block(111) is held[0]
    check_pool(pool)


def test_pool_touch_cache_and_evict() -> None:
    pool = BlockPool(4)
    (blk,) = pool.get_new_blocks(1) or []
    assert pool.cache_full_block(blk, 42)
    pool.free_blocks([blk])
    check_pool(pool)
    assert pool.get_cached_block(42) is blk and blk.ref_cnt == 0  # free yet findable
    pool.touch([blk])  # reused from the middle/head of the free queue
    assert blk.ref_cnt == 1 and not FreeBlockQueue.contains(blk)
    check_pool(pool)
    pool.touch([blk])
    assert blk.ref_cnt == 2
    pool.free_blocks([blk, blk])
    check_pool(pool)
    # Drain the pool: the cached block is reused, so its hash is evicted.
    got = pool.get_new_blocks(3)
    assert got is not None and blk in got
    assert pool.get_cached_block(42) is None and blk.block_hash is None
    check_pool(pool)


def test_pool_duplicate_hash_keeps_first_block() -> None:
    pool = BlockPool(4)
    a, b = pool.get_new_blocks(2) or []
    assert pool.cache_full_block(a, 7)
    assert not pool.cache_full_block(b, 7)
    assert pool.get_cached_block(7) is a and b.block_hash is None
    pool.free_blocks([b, a])
    check_pool(pool)


# ----------------------------------------------------------------------------- hashing


def _reference_hash(parent: int | None, tokens: tuple[int, ...], extra: tuple = ()) -> int:
    """The documented byte encoding, written independently of the implementation."""
    data = b"autoglm-trt/kv-block/v1"
    data += b"\x00" if parent is None else b"\x01" + struct.pack("<Q", parent)
    data += struct.pack("<Q", len(tokens)) + struct.pack(f"<{len(tokens)}q", *tokens)
    data += struct.pack("<Q", len(extra))
    for item in extra:
        if isinstance(item, int):
            tag, raw = b"i", str(item).encode()
        elif isinstance(item, str):
            tag, raw = b"s", item.encode()
        else:
            tag, raw = b"b", item
        data += tag + struct.pack("<Q", len(raw)) + raw
    return struct.unpack("<Q", hashlib.sha256(data).digest()[:8])[0]


def test_hash_matches_independent_hashlib_computation() -> None:
    h1 = hash_block_tokens(None, (1, 2, 3, 4))
    assert h1 == _reference_hash(None, (1, 2, 3, 4))
    assert 0 <= h1 < 2**64
    h2 = hash_block_tokens(h1, (5, 6, 7, 8), extra=("img:abc", 17, b"\x00\x01"))
    assert h2 == _reference_hash(h1, (5, 6, 7, 8), ("img:abc", 17, b"\x00\x01"))
    # Chain, tokens and extra all matter.
    assert hash_block_tokens(None, (5, 6, 7, 8)) != hash_block_tokens(h1, (5, 6, 7, 8))
    assert hash_block_tokens(h1, (5, 6, 7, 9)) != hash_block_tokens(h1, (5, 6, 7, 8))
    assert hash_block_tokens(h1, (5, 6, 7, 8), ("a",)) != hash_block_tokens(h1, (5, 6, 7, 8), ("b",))
    with pytest.raises(TypeError, match="extra items"):
        hash_block_tokens(None, (1,), extra=(1.5,))


def test_hash_is_stable_across_processes() -> None:
    code = "from runtime.kv import hash_block_tokens as h; print(h(h(None, (1, 2, 3)), (4, 5, 6), ('x',)))"
    outs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        res = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
        )
        outs.add(int(res.stdout))
    expected = hash_block_tokens(hash_block_tokens(None, (1, 2, 3)), (4, 5, 6), ("x",))
    assert outs == {expected}


# ----------------------------------------------------------------------------- manager


def test_allocate_grow_and_free_idempotent() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    assert kv.get_computed_blocks("a", toks(6)) == 0
    assert kv.allocate_slots("a", 6) == [1, 2]
    check(kv)
    assert kv.allocate_slots("a", 8) == []  # still fits in 2 blocks
    assert kv.allocate_slots("a", 9) == [3]  # decode crosses a block boundary
    assert kv.block_table("a") == [1, 2, 3]
    check(kv)
    kv.free("a")
    check(kv)
    assert kv.num_free_blocks == 7
    kv.free("a")  # double free: no-op
    kv.free("never-seen")
    check(kv)
    assert kv.num_free_blocks == 7
    with pytest.raises(KeyError, match="never allocated, or already freed"):
        kv.block_table("a")


def test_manager_exhaustion_leaves_state_unchanged() -> None:
    kv = KVCacheManager(num_blocks=5, block_size=4)
    kv.get_computed_blocks("a", toks(8))
    assert kv.allocate_slots("a", 8) == [1, 2]
    state = (kv.block_table("a"), kv.num_free_blocks, [b.ref_cnt for b in kv.pool.blocks])
    assert kv.allocate_slots("a", 8 + 3 * 4) is None  # needs 3 more, 2 free
    assert kv.allocate_slots("b", 100) is None
    assert (kv.block_table("a"), kv.num_free_blocks, [b.ref_cnt for b in kv.pool.blocks]) == state
    assert not kv.has_request("b")
    check(kv)


def test_prefix_sharing_refcounts_and_never_full_prompt() -> None:
    bs = 4
    kv = KVCacheManager(num_blocks=16, block_size=bs)
    prompt_a = toks(12)  # exactly 3 full blocks
    assert kv.get_computed_blocks("a", prompt_a) == 0
    kv.allocate_slots("a", len(prompt_a))
    kv.cache_blocks("a", prompt_a)
    check(kv)

    # Same 12 tokens: all 3 blocks are cached, but the last token must be recomputed.
    assert kv.get_computed_blocks("b", prompt_a) == 8
    assert kv.block_table("b") == kv.block_table("a")[:2]
    kv.allocate_slots("b", len(prompt_a))
    check(kv)

    # Shares 2 blocks + 1 token with a, then diverges.
    prompt_c = [*toks(9), 99, 98, 97, 96, 95]
    assert kv.get_computed_blocks("c", prompt_c) == 8
    kv.allocate_slots("c", len(prompt_c))
    shared = [kv.pool.blocks[i] for i in kv.block_table("a")[:2]]
    assert [b.ref_cnt for b in shared] == [3, 3]
    assert kv.pool.blocks[kv.block_table("a")[2]].ref_cnt == 1
    assert kv.block_table("c")[2] not in kv.block_table("a")
    check(kv)
    assert kv.prefix_cache_stats.queries == 12 + 12 + 14
    assert kv.prefix_cache_stats.hits == 16
    assert kv.prefix_cache_stats.hit_rate == pytest.approx(16 / 38)

    kv.free("c")
    kv.free("b")
    assert [b.ref_cnt for b in shared] == [1, 1]
    check(kv)

    # One-block prompt of exactly block_size tokens: nothing may be reported as cached.
    assert kv.get_computed_blocks("d", toks(4)) == 0
    assert kv.get_computed_blocks("e", toks(1)) == 0
    assert kv.get_computed_blocks("f", []) == 0
    check(kv)


def test_prefix_blocks_survive_free_until_evicted_tail_first() -> None:
    bs = 2
    kv = KVCacheManager(num_blocks=5, block_size=bs)  # 4 usable blocks
    prompt = toks(8)  # 4 blocks
    kv.get_computed_blocks("a", prompt)
    kv.allocate_slots("a", 8)
    kv.cache_blocks("a", prompt)
    table_a = kv.block_table("a")
    kv.free("a")
    check(kv)
    assert kv.num_free_blocks == 4 and kv.pool.num_cached_blocks == 4
    # Freed last-block-first: the sequence's tail is at the head of the LRU queue.
    assert [b.block_id for b in kv.pool.free_queue] == table_a[::-1]

    # A new request takes 1 block: it evicts a's last block, keeping a's prefix findable.
    kv.get_computed_blocks("x", [50, 51])
    assert kv.allocate_slots("x", 2) == [table_a[3]]
    assert kv.pool.num_cached_blocks == 3
    check(kv)
    assert kv.get_computed_blocks("a2", prompt) == 6  # 3 cached blocks reattached
    assert kv.block_table("a2") == table_a[:3]
    check(kv)
    # Pool is now full: a2 cannot grow, and the failure changes nothing.
    assert kv.allocate_slots("a2", 8) is None
    kv.free("x")
    assert kv.allocate_slots("a2", 8) is not None
    check(kv)
    kv.free("a2")
    check(kv)

    # Filling the pool with unrelated requests evicts every cached block.
    kv.get_computed_blocks("y", toks(8, start=100))
    assert kv.allocate_slots("y", 8) is not None
    assert kv.pool.num_cached_blocks == 0
    assert kv.get_computed_blocks("a3", prompt) == 0
    check(kv)


def test_cache_blocks_incrementally_during_decode() -> None:
    bs = 4
    kv = KVCacheManager(num_blocks=10, block_size=bs)
    seq = toks(6)
    kv.get_computed_blocks("a", seq)
    kv.allocate_slots("a", len(seq))
    kv.cache_blocks("a", seq)
    assert kv.pool.num_cached_blocks == 1
    for t in range(6, 13):  # decode 7 tokens, one at a time
        seq.append(t)
        kv.allocate_slots("a", len(seq))
        kv.cache_blocks("a", seq)
        check(kv)
    assert kv.pool.num_cached_blocks == 3  # 13 tokens -> 3 full blocks
    # A second request with the same 13 tokens hits all 3 (12 < 13 tokens).
    assert kv.get_computed_blocks("b", seq) == 12
    assert kv.block_table("b") == kv.block_table("a")[:3]


def test_prefix_caching_disabled() -> None:
    kv = KVCacheManager(num_blocks=6, block_size=2, enable_prefix_caching=False)
    kv.get_computed_blocks("a", toks(5))
    kv.allocate_slots("a", 5)
    kv.cache_blocks("a", toks(5))
    assert kv.pool.num_cached_blocks == 0
    assert kv.get_computed_blocks("b", toks(5)) == 0
    assert kv.prefix_cache_stats.queries == 0
    check(kv)


def test_slot_mapping_matches_block_table() -> None:
    bs = 4
    kv = KVCacheManager(num_blocks=12, block_size=bs)
    kv.get_computed_blocks("pad", toks(3))
    kv.allocate_slots("pad", 3)  # so "a" does not get blocks 1.. in order
    kv.get_computed_blocks("a", toks(11))
    kv.allocate_slots("a", 11)
    table = kv.block_table("a")
    block_ids, offsets = kv.slot_mapping("a", 2, 9)
    assert block_ids.dtype == np.int64 and offsets.dtype == np.int64
    assert block_ids.shape == offsets.shape == (9,)
    for i, pos in enumerate(range(2, 11)):
        assert block_ids[i] == table[pos // bs] and offsets[i] == pos % bs

    # Writing through the mapping then reading through the table gives the tokens back in order.
    pool = np.zeros((2, 2, kv.num_blocks, bs, 1, 1), dtype=np.float32)  # [L, 2, N, bs, H, D]
    bids, offs = kv.slot_mapping("a", 0, 11)
    pool[:, 0, bids, offs] = np.arange(11, dtype=np.float32)[:, None, None]
    gathered = pool[0, 0, table].reshape(-1)[:11]  # [blocks * bs] in token order
    np.testing.assert_array_equal(gathered, np.arange(11))

    assert kv.slot_mapping("a", 5, 0)[0].shape == (0,)
    with pytest.raises(ValueError, match="allocate_slots"):
        kv.slot_mapping("a", 10, 3)  # position 12 not allocated


def test_padded_block_tables() -> None:
    out = KVCacheManager.padded_block_tables([[3, 4, 5], [7], []])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[3, 4, 5], [7, 0, 0], [0, 0, 0]])
    assert KVCacheManager.padded_block_tables([[1]], min_width=4).tolist() == [[1, 0, 0, 0]]
    assert KVCacheManager.padded_block_tables([]).shape == (0, 1)


def test_random_workload_keeps_invariant() -> None:
    rng = random.Random(1)
    kv = KVCacheManager(num_blocks=24, block_size=4)
    prefixes = [toks(12, start=1000 * i) for i in range(3)]
    live: dict[str, list[int]] = {}
    for step in range(400):
        op = rng.random()
        if op < 0.35 or not live:
            rid = f"r{step}"
            prompt = rng.choice(prefixes)[: rng.randint(1, 12)] + toks(rng.randint(0, 6), start=50_000 + step)
            cached = kv.get_computed_blocks(rid, prompt)
            assert cached < max(len(prompt), 1) and cached % 4 == 0
            if kv.allocate_slots(rid, len(prompt)) is None:
                kv.free(rid)
            else:
                kv.cache_blocks(rid, prompt)
                live[rid] = prompt
        elif op < 0.8:
            rid = rng.choice(sorted(live))
            live[rid].append(rng.randint(0, 99))
            if kv.allocate_slots(rid, len(live[rid])) is None:
                kv.free(rid)
                del live[rid]
            else:
                kv.cache_blocks(rid, live[rid])
        else:
            rid = rng.choice(sorted(live))
            kv.free(rid)
            kv.free(rid)
            del live[rid]
        check(kv)
    for rid in list(live):
        kv.free(rid)
    check(kv)
    assert kv.num_free_blocks == 23 and kv.usage == 0.0
