"""The contract every engine backend meets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from runtime import decoder_io as io
from runtime.kv.pool import HostKVPool, KVPool, KVPoolSpec, SlotMapping


@dataclass(frozen=True)
class DeviceTensor:
    """An output left in GPU memory for the next engine: a pipeline stage's hidden states, handed
    device to device (runtime/stages.py). Valid until its engine's next call."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device: int
    owner: object = None  # what keeps the memory alive (an ONNX Runtime OrtValue)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class Engine(ABC):
    """A loaded engine: named numpy inputs in, named numpy outputs out.

    Inputs are host arrays owned by the caller and only read during `run`. Outputs are new arrays
    owned by the caller. A decoder engine also owns its KV pool (`create_kv_pool`) and writes each
    call's new K/V into it (`run_step`). Not thread-safe: one call at a time per engine.
    """

    input_dtypes: dict[str, np.dtype]
    # False where a call may not mix several sequences, several new tokens each, and a cached past
    # (ORT's CPU GroupQueryAttention); the decoder then runs such a batch one sequence at a time.
    batched_prefill_with_past: bool = True
    # False where a call may not mix several sequences' prompts at all (ORT's CPU GroupQueryAttention
    # rotating q/k itself reads the first sequence's positions for every sequence of a first prompt).
    batched_prefill: bool = True
    _new_kv: np.ndarray | None = None  # run_step's buffer for a call's new K/V

    @abstractmethod
    def run(
        self, feeds: dict[str, np.ndarray], outputs: list[str], into: dict[str, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        """Returns `outputs`, except those named in `into`, which the engine writes into the given
        arrays (a slot pool's K/V, updated in place: runtime/kv/slot_pool.py)."""

    def create_kv_pool(self, spec: KVPoolSpec) -> KVPool:
        """The pool this engine reads K/V from, where its compute is: host memory here."""
        return HostKVPool(spec)

    def run_step(
        self, feeds: dict[str, np.ndarray], pool: KVPool, slots: SlotMapping, output: str = io.LOGITS
    ) -> np.ndarray:
        """One decoder call: K/V read from `pool`, the call's new K/V written into it at `slots`;
        returns `output`: the logits (host float32 [B, T, V]), or a pipeline stage's hidden_out
        (runtime/stages.py): a host array here, a DeviceTensor from engines on a GPU, which take
        one as the next stage's hidden_in. A host array is the caller's own: no later call
        writes into it, so callers may return views of it. Engines with a device pool override
        this so that only the logits cross to the host."""
        new_kv = self._new_kv_buffer(pool.spec, feeds[io.POSITION_IDS].shape[-2:])
        into = {**pool.outputs_in_place(), io.NEW_KV: new_kv}
        (result,) = self.run({**feeds, **pool.feeds()}, [output], into)
        pool.write(new_kv, slots)
        return result

    def _new_kv_buffer(self, spec: KVPoolSpec, batch_seq: tuple[int, int]) -> np.ndarray:
        """Where a call's new K/V land before the pool takes them: [L, 2, B, S, KVH, D], the same
        array while calls keep their shape (an engine binds it once, not on every decode step)."""
        shape = (spec.num_layers, 2, *batch_seq, spec.num_kv_heads, spec.head_dim)
        kept = self._new_kv
        if kept is None or kept.shape != shape or kept.dtype != spec.dtype:
            self._new_kv = kept = np.empty(shape, spec.dtype)
        return kept
