"""KV-cache events for Dynamo's KV-aware router, read off the engine's prefix cache.

The router keeps, per worker, the blocks that worker has cached, and learns them from events:
"stored" (these consecutive full blocks, their tokens, and the hash of the block before them) and
"removed" (these hashes were evicted). We derive both from the pool after each engine step,
through its public lookup only (`BlockPool.get_cached_block`), without hooks in runtime/kv:

* stored: for every request the step touched, the chain hashes of its full, computed blocks (the
  same `hash_block_tokens` chain the KV manager computes) that the pool now holds and that were
  not announced yet;
* removed: announced hashes the pool no longer holds (their blocks were reused for other tokens).

Cost per step: one hash per newly filled block, and one dict lookup per announced block.
Not thread-safe: the engine's loop thread calls it, after each step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from runtime.kv import KVCacheManager
from runtime.kv.block import hash_block_tokens
from runtime.request import Request


class StoredBlocks(NamedTuple):
    """Consecutive full blocks of one sequence, newly cached. Hashes are our unsigned 64-bit ones."""

    token_ids: list[int]  # block_size tokens per block, blocks in order
    block_hashes: list[int]
    parent_hash: int | None  # the block before the first one; None: they start the sequence


class KvEvents(NamedTuple):
    stored: list[StoredBlocks]
    removed: list[int]

    def __bool__(self) -> bool:
        return bool(self.stored or self.removed)


def signed64(block_hash: int) -> int:
    """Dynamo's events carry hashes as signed 64-bit integers; ours are unsigned."""
    return block_hash - (1 << 64) if block_hash >= 1 << 63 else block_hash


class KvEventTracker:
    def __init__(self, kv: KVCacheManager) -> None:
        self.kv = kv
        self.block_size = kv.block_size
        self._announced: set[int] = set()
        self._chains: dict[str, list[int]] = {}  # request id -> chain hashes of its full blocks

    @property
    def announced(self) -> frozenset[int]:
        return frozenset(self._announced)

    def update(self, requests: Iterable[Request]) -> KvEvents:
        """Events since the last call. Pass every request the step ran, including those that
        finished or were aborted in it (their blocks stay cached after they are freed)."""
        pool = self.kv.pool
        removed = [h for h in self._announced if pool.get_cached_block(h) is None]
        self._announced.difference_update(removed)
        stored = []
        if self.kv.enable_prefix_caching:
            for request in requests:
                stored.extend(self._new_blocks(request))
        return KvEvents(stored, removed)

    def forget(self, request_id: str) -> None:
        """The request is done: drop its hash chain (its announced blocks stay announced)."""
        self._chains.pop(request_id, None)

    def _new_blocks(self, request: Request) -> list[StoredBlocks]:
        bs, pool = self.block_size, self.kv.pool
        tokens = request.all_token_ids()[: request.num_computed]
        chain = self._chains.setdefault(request.request_id, [])
        for i in range(len(chain), len(tokens) // bs):
            parent = chain[i - 1] if i else None
            chain.append(hash_block_tokens(parent, tuple(tokens[i * bs : (i + 1) * bs]), request.block_salt))
        runs: list[StoredBlocks] = []
        run: StoredBlocks | None = None
        for i, block_hash in enumerate(chain):
            if block_hash in self._announced or pool.get_cached_block(block_hash) is None:
                run = None
                continue
            if run is None:
                run = StoredBlocks([], [], chain[i - 1] if i else None)
                runs.append(run)
            run.token_ids.extend(tokens[i * bs : (i + 1) * bs])
            run.block_hashes.append(block_hash)
            self._announced.add(block_hash)
        return runs
