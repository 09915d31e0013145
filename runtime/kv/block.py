"""One KV cache block, and the chain hash that names a full block's contents.

A block holds the K/V of ``block_size`` consecutive token positions of one sequence, for every
layer: in the runtime's numpy pool ``[L, 2, num_blocks, block_size, kv_heads, head_dim]`` it is the
slice ``pool[:, :, block_id]``. This module only does bookkeeping; it never touches K/V data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_HASH_DOMAIN = b"autoglm-trt/kv-block/v1"


class KVBlock:
    """Bookkeeping for one block of the pool (owned by :class:`~runtime.kv.block_pool.BlockPool`).

    Attributes:
        block_id: index of the block in the K/V pool's ``num_blocks`` axis; 0 is the null block.
        ref_cnt: number of requests whose block table holds this block. A block with
            ``ref_cnt == 0`` sits in the pool's free queue (except the null block, which never does).
        block_hash: chain hash of the tokens the block holds, set only once the block is full and
            registered in the prefix cache; ``None`` otherwise. It stays set while the block is free
            (so a later request can reuse it) and is cleared when the block is evicted.
        prev_free / next_free: links of the free queue's doubly linked list; both are ``None``
            exactly when the block is not in the queue. Only :class:`FreeBlockQueue` writes them.
        is_null: true only for block 0, the placeholder used to pad block tables.
    """

    __slots__ = ("block_hash", "block_id", "is_null", "next_free", "prev_free", "ref_cnt")

    def __init__(self, block_id: int, is_null: bool = False) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: int | None = None
        self.prev_free: KVBlock | None = None
        self.next_free: KVBlock | None = None
        self.is_null = is_null

    def __repr__(self) -> str:
        # Not the links: printing them would walk the whole free queue.
        return f"KVBlock(id={self.block_id}, ref_cnt={self.ref_cnt}, hash={self.block_hash})"


def _encode_extra_item(item: object) -> bytes:
    if isinstance(item, bool | int):
        tag, raw = b"i", str(int(item)).encode("ascii")
    elif isinstance(item, str):
        tag, raw = b"s", item.encode("utf-8")
    elif isinstance(item, bytes | bytearray):
        tag, raw = b"b", bytes(item)
    else:
        raise TypeError(
            f"hash_block_tokens: extra items must be int, str or bytes (e.g. an image's content "
            f"hash), got {type(item).__name__}: {item!r}. Convert it to one of those first."
        )
    return tag + len(raw).to_bytes(8, "little") + raw


def hash_block_tokens(parent_hash: int | None, token_ids: Sequence[int], extra: tuple = ()) -> int:
    """Chain hash of one full block: depends on every token before it through ``parent_hash``.

    Deterministic across processes and Python versions (sha256, not ``hash()``). The bytes hashed
    are, in order::

        b"autoglm-trt/kv-block/v1"
        b"\\x00" if parent_hash is None else b"\\x01" + parent_hash as 8 bytes little-endian unsigned
        len(token_ids) as 8 bytes little-endian, then each token as int64 little-endian
        len(extra) as 8 bytes little-endian, then each item as tag + 8-byte LE length + payload:
            int -> b"i" + decimal ASCII, str -> b"s" + UTF-8, bytes -> b"b" + raw bytes

    and the result is the first 8 bytes of the digest read as a little-endian unsigned int.

    Args:
        parent_hash: the previous block's hash, or ``None`` for a sequence's first block.
        token_ids: the block's token ids (``block_size`` of them for a full block).
        extra: anything else that changes the block's K/V for the same tokens, e.g. the content
            hashes of images whose placeholder tokens fall inside this block.
    """
    h = hashlib.sha256(_HASH_DOMAIN)
    if parent_hash is None:
        h.update(b"\x00")
    else:
        h.update(b"\x01" + int(parent_hash).to_bytes(8, "little", signed=False))
    h.update(len(token_ids).to_bytes(8, "little"))
    h.update(np.asarray(token_ids, dtype="<i8").tobytes())
    h.update(len(extra).to_bytes(8, "little"))
    for item in extra:
        h.update(_encode_extra_item(item))
    return int.from_bytes(h.digest()[:8], "little", signed=False)
