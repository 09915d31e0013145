"""Pack the KV blocks one engine call reads into a compact pool, and renumber the block tables.

The decoder graph reads past K/V only through `block_tables` (a Gather over pool blocks), so a
pool holding just the blocks the tables name — with the tables renumbered to it — gives exactly
the same result. Block 0 (the null block, used for padding) always stays first.
"""

from __future__ import annotations

import numpy as np

from runtime import decoder_io as io


def block_bucket(blocks: int, limit: int | None = None) -> int:
    """The next power of two ≥ blocks, so decode shapes repeat and CUDA graphs are reused; never
    past `limit` (the profile's most blocks per sequence, often not a power of two: 188 for
    --max-seq-len 3000 with 16-token blocks), which would fit no profile."""
    bucket = 1 << max(0, int(blocks) - 1).bit_length()
    return bucket if limit is None else max(int(blocks), min(bucket, int(limit)))


def compact_pool(
    feeds: dict[str, np.ndarray], kv_names: list[str], pad_to_bucket: bool, max_blocks: int | None = None
) -> dict[str, np.ndarray]:
    """Return new feeds whose KV inputs hold only the blocks `block_tables` names.

    block_tables [B, M] -> [B, M'] (M' = block_bucket(M, max_blocks) when bucketing; padded with
    block 0); each KV input [NB, bs, KVH, D] -> [P, bs, KVH, D] with P = 1 + number of distinct
    real blocks, or 1 + B * M' when bucketing (so the shape depends only on B and M').
    """
    pad = pad_to_bucket
    tables = np.asarray(feeds[io.BLOCK_TABLES])
    batch, blocks = tables.shape
    if pad:
        wide = block_bucket(blocks, max_blocks)
        tables = np.pad(tables, ((0, 0), (0, wide - blocks)))
    ids, inverse = np.unique(np.concatenate([[0], tables.ravel()]), return_inverse=True)
    # ids[0] == 0 (block ids are ≥ 0, and 0 was prepended), so the null block keeps index 0.
    size = 1 + batch * tables.shape[1] if pad else len(ids)
    out = dict(feeds)
    out[io.BLOCK_TABLES] = inverse[1:].reshape(tables.shape).astype(np.int64)
    for name in kv_names:
        pool = feeds[name]
        packed = np.zeros((size, *pool.shape[1:]), pool.dtype)
        np.take(pool, ids, axis=0, out=packed[: len(ids)])
        out[name] = packed
    return out
