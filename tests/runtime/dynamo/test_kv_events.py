"""KV events for Dynamo's router, derived from the prefix cache (no Dynamo needed)."""

from __future__ import annotations

from runtime.dynamo.kv_events import KvEventTracker, signed64
from runtime.kv import KVCacheManager, hash_block_tokens
from runtime.prompt import PreparedPrompt
from runtime.request import Request
from runtime.sampling import SamplingParams

BS = 4


def run_request(kv: KVCacheManager, rid: str, tokens: list[int]) -> Request:
    """What the scheduler does for a prefill of `tokens`: attach the cached prefix, allocate, cache."""
    request = Request(rid, PreparedPrompt(tokens), SamplingParams(max_tokens=4))
    request.num_cached_prompt = kv.get_computed_blocks(rid, tokens)
    assert kv.allocate_slots(rid, len(tokens)) is not None
    kv.cache_blocks(rid, tokens)
    request.num_computed = len(tokens)
    return request


def chain(tokens: list[int]) -> list[int]:
    hashes, parent = [], None
    for i in range(len(tokens) // BS):
        parent = hash_block_tokens(parent, tuple(tokens[i * BS : (i + 1) * BS]))
        hashes.append(parent)
    return hashes


def test_stored_blocks_carry_tokens_and_parent_and_are_announced_once():
    kv = KVCacheManager(16, BS)
    tracker = KvEventTracker(kv)
    first = list(range(10))  # two full blocks and a partial one
    request = run_request(kv, "a", first)
    events = tracker.update([request])
    assert events.removed == []
    [stored] = events.stored
    assert stored.parent_hash is None
    assert stored.block_hashes == chain(first)
    assert stored.token_ids == first[:8]
    assert not tracker.update([request]), "nothing new: no second announcement"

    # A longer turn of the same conversation: only the blocks past the shared prefix are new.
    kv.free("a")
    second = [*first, 50, 51, 52, 53, 54, 55]
    request = run_request(kv, "b", second)
    assert request.num_cached_prompt == 8
    [stored] = tracker.update([request]).stored
    assert stored.parent_hash == chain(second)[1]
    assert stored.block_hashes == chain(second)[2:]
    assert stored.token_ids == second[8:16]


def test_evicted_blocks_are_removed():
    kv = KVCacheManager(4, BS)  # 3 usable blocks
    tracker = KvEventTracker(kv)
    a = run_request(kv, "a", list(range(12)))
    announced = tracker.update([a]).stored[0].block_hashes
    kv.free("a")
    tracker.forget("a")
    b = run_request(kv, "b", list(range(100, 108)))  # reuses two of a's blocks
    events = tracker.update([b])
    assert sorted(events.removed) == sorted(announced[-2:])  # a's tail goes first
    assert events.stored[0].block_hashes == chain(list(range(100, 108)))
    assert tracker.announced == {announced[0], *chain(list(range(100, 108)))}


def test_no_events_without_prefix_caching():
    kv = KVCacheManager(16, BS, enable_prefix_caching=False)
    tracker = KvEventTracker(kv)
    assert not tracker.update([run_request(kv, "a", list(range(12)))])


def test_hashes_are_signed_64_bit():
    assert signed64(5) == 5
    assert signed64((1 << 64) - 1) == -1
    assert signed64(1 << 63) == -(1 << 63)
