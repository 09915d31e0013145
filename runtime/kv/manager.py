"""KVCacheManager: the one object the scheduler and generation loop talk to about KV blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from runtime.kv.block import KVBlock, hash_block_tokens
from runtime.kv.block_pool import NULL_BLOCK_ID, BlockPool


class PrefixCacheStats(NamedTuple):
    """Prefix-cache lookups since the manager was created, counted in tokens."""

    queries: int  # prompt tokens looked up by get_computed_blocks
    hits: int  # of those, tokens served from cached blocks

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class KVCacheManager:
    """Per-request block tables over a :class:`BlockPool`, with prefix caching.

    Lifecycle of a request (``request_id`` is any unique str)::

        n_cached = kv.get_computed_blocks(rid, prompt)     # attach cached prefix blocks
        if kv.allocate_slots(rid, len(prompt)) is None:   # None: pool full, nothing changed
            kv.free(rid)   # drop the attached prefix blocks while waiting; retry from the top later
        # run the model on prompt[n_cached:], writing K/V at kv.slot_mapping(rid, n_cached, ...)
        kv.cache_blocks(rid, prompt)                       # publish blocks that are now full
        # each decode step: allocate_slots(rid, n + 1), write at slot_mapping(rid, n, 1), cache_blocks
        kv.free(rid)                                       # finished or preempted

    Shapes: the runtime's pool is ``[L, 2, num_blocks, block_size, kv_heads, head_dim]``; token
    position ``p`` of a request lives at ``pool[:, :, table[p // block_size], p % block_size]``.

    Ownership: the manager owns its pool and every request's list of blocks; the lists returned
    by :meth:`block_table` are copies. Not thread-safe: call it from the scheduler's thread.
    Invariant: ``pool.num_free_blocks + #(blocks in use) == num_blocks - 1`` after every call.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"KVCacheManager: block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self._blocks: dict[str, list[KVBlock]] = {}
        self._hashes: dict[str, list[int]] = {}  # chain hashes of the request's full blocks so far
        self._num_cached: dict[str, int] = {}  # leading blocks already registered in the cache
        self._queries = 0
        self._hits = 0

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self._queries, self._hits)

    def has_request(self, request_id: str) -> bool:
        return request_id in self._blocks

    def get_computed_blocks(self, request_id: str, token_ids: Sequence[int], extra_keys: tuple = ()) -> int:
        """Attach the longest cached prefix of full blocks to a new request; return its length in
        tokens (a multiple of ``block_size``, and always < ``len(token_ids)`` so the model still
        runs on at least the last prompt token and produces logits).

        ``extra_keys`` (e.g. the prompt's media content hashes) salt every block hash of the
        request; pass the same value to :meth:`cache_blocks`.
        """
        if self._blocks.get(request_id):
            raise ValueError(
                f"get_computed_blocks: request {request_id!r} already holds blocks; call it once "
                f"per new (or freed and re-admitted) request, before allocate_slots."
            )
        hits: list[KVBlock] = []
        hashes: list[int] = []
        if self.enable_prefix_caching:
            bs = self.block_size
            parent: int | None = None
            for i in range(max(len(token_ids) - 1, 0) // bs):  # full blocks strictly before the last token
                parent = hash_block_tokens(parent, tuple(token_ids[i * bs : (i + 1) * bs]), extra_keys)
                block = self.pool.get_cached_block(parent)
                if block is None:
                    break
                hits.append(block)
                hashes.append(parent)
            self.pool.touch(hits)
            self._queries += len(token_ids)
            self._hits += len(hits) * bs
        self._blocks[request_id] = hits
        self._hashes[request_id] = hashes
        self._num_cached[request_id] = len(hits)
        return len(hits) * self.block_size

    def allocate_slots(self, request_id: str, num_total_tokens: int) -> list[int] | None:
        """Grow the request's table to hold ``num_total_tokens`` tokens (cached ones included).

        Returns the ids of the newly added blocks (``[]`` if it already had room), or ``None``
        when the pool cannot supply them, in which case nothing changed.
        """
        if num_total_tokens < 0:
            raise ValueError(f"allocate_slots: num_total_tokens must be >= 0, got {num_total_tokens}")
        blocks = self._blocks.get(request_id, [])
        need = -(-num_total_tokens // self.block_size) - len(blocks)
        if need <= 0:
            return []
        new = self.pool.get_new_blocks(need)
        if new is None:
            return None
        if request_id not in self._blocks:
            self._blocks[request_id] = blocks
            self._hashes[request_id] = []
            self._num_cached[request_id] = 0
        blocks.extend(new)
        return [b.block_id for b in new]

    def cache_blocks(self, request_id: str, token_ids: Sequence[int], extra_keys: tuple = ()) -> None:
        """Publish the request's blocks that ``token_ids`` (all tokens whose K/V is now written,
        from position 0) fill completely, so later requests can share them. Cheap to call every
        step: blocks published before are skipped.
        """
        blocks = self._require(request_id)
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        hashes = self._hashes[request_id]
        num_full = min(len(token_ids) // bs, len(blocks))
        for i in range(self._num_cached[request_id], num_full):
            if i == len(hashes):
                parent = hashes[i - 1] if i > 0 else None
                block_tokens = tuple(token_ids[i * bs : (i + 1) * bs])
                hashes.append(hash_block_tokens(parent, block_tokens, extra_keys))
            self.pool.cache_full_block(blocks[i], hashes[i])
        self._num_cached[request_id] = max(self._num_cached[request_id], num_full)

    def block_table(self, request_id: str) -> list[int]:
        """Block ids of the request, in token order (a copy)."""
        return [b.block_id for b in self._require(request_id)]

    def free(self, request_id: str) -> None:
        """Release the request's blocks, last block first (so its tail is evicted first).
        Idempotent: freeing an unknown or already-freed request does nothing."""
        blocks = self._blocks.pop(request_id, None)
        self._hashes.pop(request_id, None)
        self._num_cached.pop(request_id, None)
        if blocks:
            self.pool.free_blocks(reversed(blocks))

    def slot_mapping(self, request_id: str, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Where positions ``start .. start+count-1`` of the request live in the pool.

        Returns ``(block_ids, offsets)``, both int64 ``[count]``, for writing new K/V with
        ``pool[layer, 0, block_ids, offsets] = k_new  # k_new: [count, kv_heads, head_dim]``.
        """
        table = self.block_table(request_id)
        if start < 0 or count < 0 or start + count > len(table) * self.block_size:
            raise ValueError(
                f"slot_mapping({request_id!r}, start={start}, count={count}): positions must lie in "
                f"[0, {len(table) * self.block_size}), the slots allocated so far; call "
                f"allocate_slots({request_id!r}, {start + count}) first."
            )
        positions = np.arange(start, start + count, dtype=np.int64)
        block_ids = np.asarray(table, dtype=np.int64)[positions // self.block_size]
        return block_ids, positions % self.block_size

    @staticmethod
    def padded_block_tables(tables: list[list[int]], min_width: int = 1) -> np.ndarray:
        """Stack block tables into int64 ``[B, M]``, ``M = max(max len, min_width)``, padding with
        the null block 0."""
        width = max([min_width, *(len(t) for t in tables)])
        out = np.full((len(tables), width), NULL_BLOCK_ID, dtype=np.int64)
        for row, table in enumerate(tables):
            out[row, : len(table)] = table
        return out

    def _require(self, request_id: str) -> list[KVBlock]:
        try:
            return self._blocks[request_id]
        except KeyError:
            raise KeyError(
                f"KVCacheManager has no request {request_id!r} (never allocated, or already freed)"
            ) from None
