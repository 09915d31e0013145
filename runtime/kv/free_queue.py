"""The free-block queue: an intrusive doubly linked list in LRU order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from runtime.kv.block import KVBlock


class FreeBlockQueue:
    """Blocks with ``ref_cnt == 0``, least recently freed at the head (evicted first).

    The links live in the blocks themselves (``prev_free`` / ``next_free``), so ``popleft``,
    ``append`` and ``remove`` of any block — including one in the middle, when a cached free block
    is reused by a prefix hit — are O(1) with no allocation. Two sentinel blocks (id -1) bound the
    list so no operation needs a special case for the ends.

    Ownership: the :class:`~runtime.kv.block_pool.BlockPool` owns the queue and is the only caller;
    it is not thread-safe (the scheduler drives the pool from one thread).

    Order contract: ``popleft`` returns the head; ``append`` puts a block at the tail. A caller
    freeing several blocks of one sequence should append them last-block-first, so the end of a
    sequence is evicted before its (more shareable) prefix.
    """

    def __init__(self, blocks: Iterable[KVBlock] = ()) -> None:
        self._head = KVBlock(-1)
        self._tail = KVBlock(-1)
        self._head.next_free = self._tail
        self._tail.prev_free = self._head
        self._len = 0
        for block in blocks:
            self.append(block)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[KVBlock]:
        """Head to tail (eviction order). Do not mutate the queue while iterating."""
        node = self._head.next_free
        while node is not self._tail:
            assert node is not None
            yield node
            node = node.next_free

    @staticmethod
    def contains(block: KVBlock) -> bool:
        """Whether ``block`` is in a queue (O(1): only queued blocks have links)."""
        return block.prev_free is not None

    def popleft(self) -> KVBlock:
        """Remove and return the head block; ``IndexError`` when empty (check ``len`` first)."""
        if self._len == 0:
            raise IndexError("popleft from an empty FreeBlockQueue")
        block = self._head.next_free
        assert block is not None
        self.remove(block)
        return block

    def popleft_n(self, n: int) -> list[KVBlock]:
        """Remove and return the first ``n`` blocks, head first."""
        if n > self._len:
            raise IndexError(f"popleft_n({n}) from a FreeBlockQueue holding {self._len} blocks")
        return [self.popleft() for _ in range(n)]

    def remove(self, block: KVBlock) -> None:
        """Unlink ``block`` from wherever it is in the queue."""
        prev, nxt = block.prev_free, block.next_free
        if prev is None or nxt is None:
            raise ValueError(f"{block} is not in the free queue")
        prev.next_free = nxt
        nxt.prev_free = prev
        block.prev_free = block.next_free = None
        self._len -= 1

    def append(self, block: KVBlock) -> None:
        """Put ``block`` at the tail (most recently freed, evicted last)."""
        if block.prev_free is not None or block.next_free is not None:
            raise ValueError(f"{block} is already in the free queue")
        last = self._tail.prev_free
        assert last is not None
        last.next_free = block
        block.prev_free = last
        block.next_free = self._tail
        self._tail.prev_free = block
        self._len += 1
