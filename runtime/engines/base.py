"""The contract every engine backend meets."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from runtime import decoder_io as io
from runtime.kv.pool import HostKVPool, KVPool, KVPoolSpec, SlotMapping


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
    # True where the engine reads the pool [L, 2, NB, KVH, bs, D] (heads before tokens in a block)
    # instead of [L, 2, NB, bs, KVH, D].
    heads_major_pool: bool = False

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]: ...

    def create_kv_pool(self, spec: KVPoolSpec) -> KVPool:
        """The pool this engine reads K/V from, where its compute is: host memory here."""
        return HostKVPool(spec)

    def run_step(
        self, feeds: dict[str, np.ndarray], pool: KVPool, slots: SlotMapping, output: str = io.LOGITS
    ) -> np.ndarray:
        """One decoder call: K/V read from `pool`, the call's new K/V written into it at `slots`;
        returns `output` as a host array: the logits (float32 [B, T, V]), or a pipeline stage's
        hidden_out (runtime/stages.py). Engines with a device pool override this so that only
        that output crosses to the host."""
        result, new_kv = self.run({**feeds, **pool.feeds(list(self.input_dtypes))}, [output, io.NEW_KV])
        pool.write(new_kv, slots)
        return result
