"""Block-table buckets for TensorRT decode calls: shapes that repeat, so CUDA graphs are reused."""

from __future__ import annotations

import numpy as np


def block_bucket(blocks: int, limit: int | None = None) -> int:
    """The next power of two ≥ blocks, so decode shapes repeat and CUDA graphs are reused; never
    past `limit` (the profile's most blocks per sequence, often not a power of two: 188 for
    --max-seq-len 3000 with 16-token blocks), which would fit no profile."""
    bucket = 1 << max(0, int(blocks) - 1).bit_length()
    return bucket if limit is None else max(int(blocks), min(bucket, int(limit)))


def pad_block_tables(tables: np.ndarray, limit: int | None = None) -> np.ndarray:
    """block_tables [B, M] -> [B, block_bucket(M, limit)], padded with the null block 0 (masked by
    past_lens, so the padding is never read as context)."""
    tables = np.asarray(tables)
    wide = block_bucket(tables.shape[1], limit)
    return np.pad(tables, ((0, 0), (0, wide - tables.shape[1])))
