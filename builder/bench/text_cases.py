"""Benchmark cases of the text decoder: one engine call through the real paged decoder each.

    prefill(b, s): b prompts of s tokens, from an empty cache
    decode(b, c):  b sequences each adding one token after c cached tokens

The pool holds zeros for the cached tokens: the work of a call does not depend on their values.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from runtime.errors import RuntimeUserError
from runtime.llm_engine import LLMEngine
from runtime.paged_decoder import StepInput


def check_case(llm: LLMEngine, batch: int, tokens: int, what: str) -> None:
    limits = llm.limits
    if batch > limits.max_batch:
        raise RuntimeUserError(
            f"batch {batch} exceeds the {limits.max_batch} the engines were built for; "
            f"use --batches up to {limits.max_batch}"
        )
    if tokens >= limits.max_seq_len:
        raise RuntimeUserError(
            f"{what} of {tokens} tokens does not fit the engines' {limits.max_seq_len}-token limit; "
            f"use at most {limits.max_seq_len - 1}"
        )


def prefill_case(llm: LLMEngine, batch: int, tokens: int) -> Callable[[], object]:
    check_case(llm, batch, tokens, "a prompt")
    rng = np.random.default_rng(0)
    vocab = llm.limits.vocab_size
    rows = [rng.integers(min(100, vocab - 1), vocab, tokens).tolist() for _ in range(batch)]
    rids = [f"bench-prefill-{i}" for i in range(batch)]

    def run():
        for rid in rids:
            llm.kv.allocate_slots(rid, tokens)
        try:
            # logits: [B, V] at each prompt's last token
            return llm.decoder.step([StepInput(rid, ids, 0) for rid, ids in zip(rids, rows, strict=True)])
        finally:
            for rid in rids:
                llm.kv.free(rid)

    return run


def decode_case(llm: LLMEngine, batch: int, context: int) -> Callable[[], object]:
    """Slots stay allocated for the engine's lifetime; each call rewrites the same position."""
    check_case(llm, batch, context + 1, "a decode context")
    rids = [f"bench-decode-b{batch}-c{context}-{i}" for i in range(batch)]
    for rid in rids:
        if llm.kv.allocate_slots(rid, context + 1) is None:
            raise RuntimeUserError("the KV pool is too small for this decode case; use smaller --batches")
    step = [StepInput(rid, [42 + i], context) for i, rid in enumerate(rids)]
    return lambda: llm.decoder.step(step)


def kv_itemsize(llm: LLMEngine) -> int:
    return np.dtype(llm.decoder.pool.spec.dtype).itemsize
