"""The block pool: allocate, free, touch, cache and evict KV blocks."""

from __future__ import annotations

from collections.abc import Iterable

from runtime.kv.block import KVBlock
from runtime.kv.free_queue import FreeBlockQueue

NULL_BLOCK_ID = 0


class BlockPool:
    """All ``num_blocks`` blocks of one K/V pool, and the prefix cache's hash -> block map.

    Block 0 is the null block: never allocated, never freed, used only to pad block tables
    (its K/V slot may hold garbage; attention masks it out by sequence length).

    Every other block is in exactly one of two states:

    * in use: ``ref_cnt > 0``, held by that many requests' block tables, not in the free queue;
    * free: ``ref_cnt == 0``, in the free queue (LRU). A free block that still has a
      ``block_hash`` is *cached*: :meth:`get_cached_block` finds it, and :meth:`touch` takes it
      back into use. It loses its hash (is evicted) only when :meth:`get_new_blocks` reuses it.

    Invariant (checked by the tests after every operation)::

        num_free_blocks + #(blocks with ref_cnt > 0) == num_blocks - 1

    Ownership: the :class:`~runtime.kv.manager.KVCacheManager` owns the pool; callers outside it
    should not mutate blocks. Not thread-safe.
    """

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(
                f"BlockPool needs num_blocks >= 2 (block 0 is the reserved null block), got "
                f"{num_blocks}. Give the KV pool more memory or use a smaller block_size."
            )
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks: tuple[KVBlock, ...] = tuple(
            KVBlock(i, is_null=(i == NULL_BLOCK_ID)) for i in range(num_blocks)
        )
        self.null_block = self.blocks[NULL_BLOCK_ID]
        self.free_queue = FreeBlockQueue(self.blocks[1:])
        self._cached: dict[int, KVBlock] = {}  # block_hash -> the one block registered for it

    @property
    def num_free_blocks(self) -> int:
        """Blocks that :meth:`get_new_blocks` could hand out now (cached free ones included)."""
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of allocatable blocks (all but the null block) in use, in [0, 1]."""
        return 1.0 - self.num_free_blocks / (self.num_blocks - 1)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks findable by hash (in use or free)."""
        return len(self._cached)

    def get_new_blocks(self, n: int) -> list[KVBlock] | None:
        """Take ``n`` blocks from the head of the free queue, each returned with ``ref_cnt == 1``.

        Cached blocks taken this way are evicted (their hashes leave the cache). Returns ``None``,
        changing nothing, when fewer than ``n`` blocks are free.
        """
        if n < 0:
            raise ValueError(f"get_new_blocks: n must be >= 0, got {n}")
        if n > self.num_free_blocks:
            return None
        blocks = self.free_queue.popleft_n(n)
        for block in blocks:
            assert block.ref_cnt == 0 and not block.is_null, block
            self._evict(block)
            block.ref_cnt = 1
        return blocks

    def _evict(self, block: KVBlock) -> None:
        if block.block_hash is None:
            return
        if self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
        block.block_hash = None

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add one reference to each block (a prefix hit), taking free ones out of the queue."""
        for block in blocks:
            assert not block.is_null, "the null block is never referenced"
            if block.ref_cnt == 0:
                self.free_queue.remove(block)
            block.ref_cnt += 1

    def free_blocks(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block, in the order given; blocks reaching 0 go to the tail
        of the free queue, keeping their hash (still cached until evicted).

        Pass a sequence's blocks last-first so its tail is evicted before its prefix.
        """
        for block in blocks:
            assert not block.is_null, "the null block is never freed"
            assert block.ref_cnt > 0, f"{block} freed more times than it was referenced"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_queue.append(block)

    def cache_full_block(self, block: KVBlock, block_hash: int) -> bool:
        """Register a full, in-use block under ``block_hash`` so other requests can find it.

        Returns False (and leaves the block uncached) when caching is off, or when another block
        already holds the same contents (two requests computed the same prefix at once): the
        earlier block stays the one the cache hands out, and this one is freed without a hash.
        """
        assert block.ref_cnt > 0 and not block.is_null, block
        if not self.enable_caching:
            return False
        if block.block_hash is not None:
            return block.block_hash == block_hash and self._cached.get(block_hash) is block
        if block_hash in self._cached:
            return False
        block.block_hash = block_hash
        self._cached[block_hash] = block
        return True

    def get_cached_block(self, block_hash: int) -> KVBlock | None:
        """The block registered under ``block_hash`` (in use or free), or ``None``."""
        return self._cached.get(block_hash)
