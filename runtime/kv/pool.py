"""The K/V memory of one decoder engine, allocated where the engine computes, and the slot mapping
that says where a call's new K/V go.

The block bookkeeping (runtime/kv/manager.py) decides which blocks a sequence owns; a `KVPool`
holds the tensors. An engine backend creates its pool (`Engine.create_kv_pool`): host memory for
ONNX Runtime on the CPU (`HostKVPool`, here), one device allocation for TensorRT and ONNX Runtime
with CUDA (runtime/engines/device_kv_pool.py). The decoder hands each call's `SlotMapping` to the
engine, which writes the call's `new_kv` into its pool in place; the decoder never touches pool
memory, so a device pool never crosses to the host.

Layout: one array [L, 2, NB, bs, KVH, D]; `layer(i, j)` is layer i's K (j=0) or V (j=1), a
contiguous slab, which is what engines bind as that layer's KV input. Fused ONNX Runtime engines
read their past from per-sequence slots instead, kept beside this pool (runtime/kv/slot_pool.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from runtime import decoder_io as io


@dataclass(frozen=True)
class KVPoolSpec:
    num_layers: int
    num_blocks: int  # block 0 is the null block (padding of block tables)
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: np.dtype
    # What a slot pool (runtime/kv/slot_pool.py) holds: sequences at once, tokens each.
    max_batch: int = 0
    max_seq_len: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, self.num_blocks, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class SlotMapping:
    """For each new token t of a call: its place in `new_kv` [L, 2, B, S, KVH, D] (row, col) and in
    the pool (block, offset within the block). All int64 [T], host arrays."""

    rows: np.ndarray
    cols: np.ndarray
    blocks: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, per_row: list[tuple[np.ndarray, np.ndarray]]) -> SlotMapping:
        """From each row's (block ids, offsets) of its new tokens, in row order."""
        rows = [np.full(len(blocks), row, np.int64) for row, (blocks, _) in enumerate(per_row)]
        cols = [np.arange(len(blocks), dtype=np.int64) for blocks, _ in per_row]
        return cls(
            np.concatenate(rows),
            np.concatenate(cols),
            np.concatenate([b for b, _ in per_row]).astype(np.int64),
            np.concatenate([o for _, o in per_row]).astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.rows)

    def as_array(self) -> np.ndarray:
        """int64 [4, T]: rows, cols, blocks, offsets (what a device scatter kernel reads)."""
        return np.stack([self.rows, self.cols, self.blocks, self.offsets]).astype(np.int64)


class KVPool(ABC):
    spec: KVPoolSpec

    @abstractmethod
    def feeds(self) -> dict:
        """The pool as the engine's KV inputs: each layer's K and V."""

    @abstractmethod
    def write(self, new_kv, slots: SlotMapping) -> None:
        """Scatter a call's new K/V [L, 2, B, S, KVH, D] (in the pool's memory space) into the
        slots the mapping names."""

    def place(
        self, keys: list[str], tables: list[list[int]], past_lens: list[int], new_lens: list[int]
    ) -> np.ndarray:
        """The order in which a call must pass its rows (sequence ids, block tables, cached and new
        token counts): as given, unless the pool keeps sequences in slots (runtime/kv/slot_pool.py)."""
        return np.arange(len(keys))

    def outputs_in_place(self) -> dict:
        """Engine outputs to be written into the pool's own memory (output name → array)."""
        return {}


class HostKVPool(KVPool):
    """A numpy pool. np.zeros maps pages lazily: a full-capacity pool costs memory only for the
    blocks that are written."""

    def __init__(self, spec: KVPoolSpec) -> None:
        self.spec = spec
        self.array = np.zeros(spec.shape, spec.dtype)
        names = io.kv_input_names(spec.num_layers)
        self._layer_views = {name: self.layer(i // 2, i % 2) for i, name in enumerate(names)}

    def layer(self, index: int, kv: int) -> np.ndarray:
        return self.array[index, kv]

    def feeds(self) -> dict[str, np.ndarray]:
        """The same view objects on every call: an engine binds them once, not on every step."""
        return self._layer_views

    def write(self, new_kv: np.ndarray, slots: SlotMapping) -> None:
        self.array[:, :, slots.blocks, slots.offsets] = new_kv[:, :, slots.rows, slots.cols]
