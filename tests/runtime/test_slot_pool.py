"""The slot pool (runtime/kv/slot_pool.py): which slots a call's rows get, that each row's past is
there in GroupQueryAttention's layout (from its slot, another slot or the pool), and that a slot is
never trusted for a sequence whose blocks changed."""

from __future__ import annotations

import numpy as np

from runtime import decoder_io as io
from runtime.kv import KVCacheManager
from runtime.kv.pool import KVPoolSpec, SlotMapping
from runtime.kv.slot_pool import SlotKVPool

L, KVH, D, BS, NB, SLOTS, S = 2, 2, 4, 4, 40, 4, 24


class Sequences:
    """Sequences in a real block manager whose tokens' K/V (random, one value set per token) are
    written to the pool as an engine's new_kv would be, and mirrored in the slots as GQA would."""

    def __init__(self) -> None:
        self.kv = KVCacheManager(NB, BS, enable_prefix_caching=False)
        self.pool = SlotKVPool(
            KVPoolSpec(L, NB, BS, KVH, D, np.dtype(np.float32), max_batch=SLOTS, max_seq_len=S)
        )
        self.tokens: dict[str, list[np.ndarray]] = {}  # each token's K/V [L, 2, KVH, D]
        self.rng = np.random.default_rng(0)

    def call(self, keys: list[str], new: list[int]) -> np.ndarray:
        """One engine call adding new[i] tokens to sequence keys[i]; checks the pasts the call's
        feeds show, then writes the new tokens into pool and slots. Returns the order."""
        pasts = [len(self.tokens.setdefault(key, [])) for key in keys]
        for key, past, count in zip(keys, pasts, new, strict=True):
            assert self.kv.allocate_slots(key, past + count) is not None
        tables = [self.kv.block_table(key) for key in keys]
        order = self.pool.place(keys, tables, pasts, new)
        feeds = self.pool.feeds()
        assert list(feeds) == io.kv_input_names(L)
        for name, present in zip(feeds, self.pool.outputs_in_place(), strict=True):
            assert present == f"present.{name}"
            assert self.pool.outputs_in_place()[present] is not None
            assert np.shares_memory(feeds[name], self.pool.outputs_in_place()[present])
        for slot_row, row in enumerate(order):  # the past each row's slot shows the engine
            past = pasts[row]
            expected = (
                np.stack(self.tokens[keys[row]][:past], axis=3) if past else np.zeros((L, 2, KVH, 0, D))
            )
            for layer in range(L):
                for kv in range(2):
                    shown = feeds[io.kv_input_names(L)[2 * layer + kv]][slot_row, :, :past]
                    np.testing.assert_array_equal(shown, expected[layer, kv])
        # the engine: new K/V written into the slots in place (GQA) and into the pool (new_kv)
        seq = max(new)
        new_kv = np.zeros((L, 2, len(keys), seq, KVH, D), np.float32)
        for slot_row, row in enumerate(order):
            for col in range(new[row]):
                value = self.rng.standard_normal((L, 2, KVH, D)).astype(np.float32)
                self.tokens[keys[row]].append(value)
                new_kv[:, :, slot_row, col] = value
                for i, name in enumerate(io.kv_input_names(L)):
                    feeds[name][slot_row, :, pasts[row] + col] = value[i // 2, i % 2]
        self.pool.write(
            new_kv, SlotMapping.build([self.kv.slot_mapping(keys[r], pasts[r], new[r]) for r in order])
        )
        return order


def test_rows_keep_their_slots_and_the_pool_is_read_only_for_what_they_lack():
    seqs = Sequences()
    assert list(seqs.call(["a"], [5])) == [0]  # prompts one at a time, each into an empty slot
    assert list(seqs.call(["b"], [3])) == [0]
    assert list(seqs.call(["c"], [6])) == [0]
    for _ in range(3):  # decode: each row already in its slot
        assert list(seqs.call(["a", "b", "c"], [1, 1, 1])) == [0, 1, 2]
    seqs.pool.array[...] = np.nan  # from here on a read of the pool would show
    assert list(seqs.call(["a", "b", "c"], [1, 1, 1])) == [0, 1, 2]
    assert list(seqs.call(["c", "a", "b"], [1, 1, 1])) == [1, 2, 0]  # rows handed over in another order


def test_a_finished_row_frees_its_slot_and_later_rows_move_down():
    seqs = Sequences()
    for key, prompt in (("a", 5), ("b", 3), ("c", 6), ("d", 2)):
        seqs.call([key], [prompt])
    seqs.call(["a", "b", "c", "d"], [1, 1, 1, 1])
    seqs.kv.free("b")
    seqs.pool.array[...] = np.nan  # c and d move from slots 2 and 3, not from the pool
    assert list(seqs.call(["a", "c", "d"], [1, 1, 1])) == [0, 2, 1]  # d moves into b's slot 1
    assert list(seqs.call(["a", "c", "d"], [2, 1, 1])) == [0, 2, 1]  # and stays


def test_a_new_sequence_takes_an_empty_slot_else_evicts_the_least_recent():
    seqs = Sequences()
    for key in "abcd":
        seqs.call([key], [2])
    seqs.call(["a", "b"], [1, 1])
    seqs.call(["c", "d"], [1, 1])  # c and d move into slots 0 and 1, a and b are evicted
    seqs.call(["e"], [3])  # an empty slot (2)
    seqs.call(["f"], [3])  # the other (3)
    assert list(seqs.call(["e", "f"], [1, 1])) == [0, 1]  # e and f move down; c, d evicted
    seqs.call(["g"], [2])  # the empty slots 2 and 3
    seqs.call(["h"], [2])
    seqs.call(["i"], [2])  # every slot held: evicts the least recently placed, e in slot 0
    assert list(seqs.call(["f", "g", "h", "i"], [1, 1, 1, 1])) == [3, 0, 1, 2]
    assert list(seqs.call(["e", "a"], [1, 1])) == [0, 1]  # evicted sequences come back from the pool


def test_a_slot_is_not_trusted_for_a_sequence_over_other_blocks():
    spec = KVPoolSpec(L, NB, BS, KVH, D, np.dtype(np.float32), max_batch=SLOTS, max_seq_len=S)
    pool = SlotKVPool(spec)
    pool.array[...] = np.random.default_rng(1).standard_normal(pool.array.shape)
    pool.place(["a"], [[1, 2]], [0], [8])
    pool.feeds()[io.kv_input_names(L)[0]][...] = np.nan  # what the slot holds, not the pool's
    # "a" again (an id reused, or a sequence rebuilt), now over blocks 3 and 4 with 7 cached tokens
    pool.place(["a"], [[3, 4]], [7], [1])
    shown = pool.feeds()[io.kv_input_names(L)[0]][0, :, :7]  # layer 0's K: [KVH, 7, D]
    expected = pool.array[0, 0, [3, 4]].reshape(2 * BS, KVH, D)[:7].transpose(1, 0, 2)
    np.testing.assert_array_equal(shown, expected)
