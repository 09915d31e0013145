"""GLM-4V's 3-D rope positions for a prompt with images, as Hugging Face's `get_rope_index` does.

Text tokens advance all three axes (temporal, height, width) together. An image's tokens, laid
out row-major over its merged grid (h × w), get temporal = start, height = start + row,
width = start + column, and the text after it starts at start + max(h, w). Generated tokens then
sit at past_len + rope_delta on all three axes, rope_delta = max position + 1 − prompt length.
"""

from __future__ import annotations

import itertools

import numpy as np


def rope_index(
    token_ids: list[int], image_token_id: int, grids: list[tuple[int, int]]
) -> tuple[np.ndarray, int]:
    """(positions int64 [3, S], rope_delta). `grids`: each image's merged (h, w), in prompt order;
    every run of consecutive image tokens is one image (the template brackets each image)."""
    is_image = np.asarray(token_ids) == image_token_id
    pieces, current, images = [], 0, iter(grids)
    for image, run in itertools.groupby(is_image.tolist()):
        length = len(list(run))
        if not image:
            pieces.append(np.broadcast_to(current + np.arange(length), (3, length)))
            current += length
            continue
        h, w = next(images)
        if h * w != length:
            raise ValueError(f"an image run of {length} tokens does not match its {h}×{w} grid")
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        pieces.append(np.stack([np.zeros(length, np.int64), rows.ravel(), cols.ravel()]) + current)
        current += max(h, w)
    positions = np.concatenate(pieces, axis=1).astype(np.int64)
    return positions, int(positions.max()) + 1 - len(token_ids)
