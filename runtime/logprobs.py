"""Log-probabilities of sampled tokens and their most likely alternatives (OpenAI `logprobs`).

Computed from the model's raw logits of the step, before temperature, top-k/top-p and any grammar
mask: what the model thinks of each token, not how the sampler happened to pick it (as vLLM
reports them by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TOP = 20  # OpenAI's limit for top_logprobs


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), most likely first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_logprobs(logits: np.ndarray, token_id: int, top_n: int) -> TokenLogprobs:
    """From one row of logits [V]: the chosen token's logprob and the `top_n` best (ties: lower id)."""
    row = log_softmax(logits)
    top: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        best = np.argpartition(-row, top_n - 1)[:top_n]
        best = best[np.lexsort((best, -row[best]))]
        top = tuple((int(i), float(row[i])) for i in best)
    return TokenLogprobs(int(token_id), float(row[token_id]), top)
