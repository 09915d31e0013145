"""Per-sequence K/V slots that an engine's attention updates in place (fused ONNX Runtime engines).

ONNX Runtime's CPU GroupQueryAttention copies its whole past into `present` on every call unless
both are one buffer [B, KVH, S, D] (measured at 512 cached tokens: 125 µs a layer with the copy,
44 µs without), and an engine reading a paged past must first gather it. Fused ORT engines
(builder/build/ort_fusion/kv_slots.py) therefore take each layer's past as such a buffer, whose
rows are consecutive slots of this cache, and write the new tokens' K/V into it in place.

The paged pool stays the record: every call's `new_kv` is still scattered into it, so the block
bookkeeping, the prefix cache and preemption work as for any engine. The slots are a working copy
of the sequences run last:

- a call's rows must sit in consecutive slots in row order; `place` picks them (a sequence keeps
  its slot while it runs, a one-row call takes its own slot or a free one) and returns the order
  in which the caller must pass its rows;
- a slot serves a row when it holds the same sequence over the same blocks for at least the row's
  past; otherwise the past is copied in, from another slot or from the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import decoder_io as io
from runtime.kv.pool import HostKVPool, KVPoolSpec


@dataclass
class _Slot:
    key: str | None = None  # the sequence held
    blocks: tuple[int, ...] = ()  # its blocks when placed: the record of what the slot holds
    length: int = 0  # tokens held
    placed: int = 0  # the call that placed it last (for evicting the least recent)


class SlotKVPool(HostKVPool):
    def __init__(self, spec: KVPoolSpec) -> None:
        super().__init__(spec)
        if spec.max_batch < 1 or spec.max_seq_len < 1:
            raise ValueError("a slot pool needs max_batch and max_seq_len")
        # [L, 2, slots, KVH, S, D]: one layer's K (or V) over consecutive slots is contiguous, the
        # layout GroupQueryAttention takes as past and present. Pages are mapped as they are written.
        shape = (spec.num_layers, 2, spec.max_batch, spec.num_kv_heads, spec.max_seq_len, spec.head_dim)
        self.slots = np.zeros(shape, spec.dtype)
        self._held = [_Slot() for _ in range(spec.max_batch)]
        self._rows = slice(0, 0)  # the slots of the call placed last
        self._views: tuple[slice, tuple[dict, dict]] = (self._rows, ({}, {}))  # (rows, (past, present))
        self._calls = 0

    def place(
        self, keys: list[str], tables: list[list[int]], past_lens: list[int], new_lens: list[int]
    ) -> np.ndarray:
        """Arrange a call's rows (sequence ids, block tables, cached and new token counts) in
        consecutive slots; returns `order`: the call runs row `order[i]` as its i-th row."""
        self._calls += 1
        size = len(keys)
        held = {slot.key: index for index, slot in enumerate(self._held) if slot.key is not None}
        valid = {
            row: held[key]
            for row, key in enumerate(keys)
            if key in held and self._holds(self._held[held[key]], tables[row], past_lens[row])
        }
        if size == 1:
            target = {0: valid[0] if 0 in valid else self._spare()}
        else:  # rows [0, size): those already there stay, the others take the free ones in order
            target = {row: slot for row, slot in valid.items() if slot < size}
            free = iter(sorted(set(range(size)) - set(target.values())))
            target |= {row: next(free) for row in range(size) if row not in target}
        for row, slot in target.items():
            if valid.get(row) != slot:
                self._copy_in(slot, valid.get(row), tables[row], past_lens[row])
        for slot in set(held.get(key) for key in keys) - {None, *target.values()}:
            self._held[slot] = _Slot()  # a copy left behind: its sequence now lives elsewhere
        for row, slot in target.items():
            self._held[slot] = _Slot(
                keys[row], tuple(tables[row]), past_lens[row] + new_lens[row], self._calls
            )
        order = sorted(target, key=target.__getitem__)
        first = target[order[0]]
        self._rows = slice(first, first + size)
        return np.array(order)

    def _holds(self, slot: _Slot, table: list[int], past: int) -> bool:
        blocks = -(-past // self.spec.block_size)
        return slot.length >= past and slot.blocks[:blocks] == tuple(table[:blocks])

    def _spare(self) -> int:
        """An empty slot, else the one placed least recently."""
        return min(
            range(len(self._held)), key=lambda i: (self._held[i].key is not None, self._held[i].placed)
        )

    def _copy_in(self, slot: int, source: int | None, table: list[int], past: int) -> None:
        """Write a row's past into `slot`: from the slot that holds it, else from the pool."""
        if past == 0:
            return
        if source is not None:  # never a slot this call writes: a moved row comes from beyond its rows
            self.slots[:, :, slot, :, :past] = self.slots[:, :, source, :, :past]
            return
        spec = self.spec
        blocks = table[: -(-past // spec.block_size)]
        tokens = self.array[:, :, blocks].reshape(spec.num_layers, 2, -1, spec.num_kv_heads, spec.head_dim)
        self.slots[:, :, slot, :, :past] = tokens[:, :, :past].transpose(0, 1, 3, 2, 4)

    def feeds(self) -> dict[str, np.ndarray]:
        """Each layer's K and V over the slots of the call placed last: [B, KVH, S, D]. The same
        view objects while the call's slots stay the same (engines rebind only what changed)."""
        return self._views_of_rows()[0]

    def outputs_in_place(self) -> dict[str, np.ndarray]:
        """The same views as each layer's present K and V (written in place)."""
        return self._views_of_rows()[1]

    def _views_of_rows(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if self._views[0] != self._rows:
            names = io.kv_input_names(self.spec.num_layers)
            views = {name: self.slots[i // 2, i % 2, self._rows] for i, name in enumerate(names)}
            present = dict(zip(io.kv_present_names(self.spec.num_layers), views.values(), strict=True))
            self._views = (self._rows, (views, present))
        return self._views[1]
