"""The contract every engine backend meets."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Engine(ABC):
    """A loaded engine: named numpy inputs in, named numpy outputs out.

    Inputs are host arrays owned by the caller and only read during `run` (the KV pool is passed
    as views, never copied by the caller). Outputs are new arrays owned by the caller. Not
    thread-safe: one `run` at a time per engine.
    """

    input_dtypes: dict[str, np.dtype]
    # False where a call may not mix several sequences, several new tokens each, and a cached past
    # (ORT's CPU GroupQueryAttention); the decoder then runs such a batch one sequence at a time.
    batched_prefill_with_past: bool = True
    # True where the engine reads the pool [L, 2, NB, KVH, bs, D] (heads before tokens in a block)
    # instead of [L, 2, NB, bs, KVH, D]; runtime/paged_decoder.py allocates and writes that layout.
    heads_major_pool: bool = False

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]: ...
