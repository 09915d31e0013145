"""Next-token sampling in numpy: greedy, temperature, top-k, top-p (Hugging Face semantics).

Order of operations per row, as Hugging Face's logits processors apply them: temperature scaling,
top-k, top-p, then a draw from the softmax of what is left. ``temperature == 0`` means greedy
(argmax, first index on ties like ``torch.argmax``); the other settings are then ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request. Validated on construction (see :meth:`validate`)."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None = fresh OS entropy (not reproducible)
    max_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: float = 0.0  # OpenAI's: minus this from every token already generated
    frequency_penalty: float = 0.0  # minus this times how often the token was generated

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field, its value and the allowed range."""
        if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
            raise ValueError(
                f"temperature must be a finite number >= 0 (0 means greedy), got {self.temperature!r}"
            )
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (1 disables nucleus sampling), got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables top-k), got {self.top_k!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be None or an int >= 0, got {self.seed!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2.0 <= value <= 2.0):
                raise ValueError(f"{name} must be a number from -2 to 2, got {value!r}")
        if not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be a tuple of token ids >= 0, got {self.stop_token_ids!r}")


def apply_penalties(logits: np.ndarray, generated: list[int], params: SamplingParams) -> None:
    """OpenAI's presence and frequency penalties on one row [V], in place, from the tokens the
    request has generated so far (not its prompt)."""
    if not (params.penalised and generated):
        return
    tokens, counts = np.unique(np.asarray(generated, np.int64), return_counts=True)
    logits[tokens] -= params.frequency_penalty * counts + params.presence_penalty


def make_generator(seed: int | None) -> np.random.Generator:
    """The per-request random generator: reproducible for an int seed, fresh entropy for None."""
    return np.random.default_rng(seed)


def _softmax(x: np.ndarray) -> np.ndarray:
    # x: [B, V] float64, at least one finite entry per row
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Sampler:
    """Stateless: picks one next token per row. Randomness comes only from the per-row generators,
    so a request's tokens depend on its own seed, not on what it was batched with."""

    def __call__(
        self,
        logits: np.ndarray,
        params: Sequence[SamplingParams],
        generators: Sequence[np.random.Generator | None],
    ) -> np.ndarray:
        return self.sample(logits, params, generators)

    def sample(
        self,
        logits: np.ndarray,
        params: Sequence[SamplingParams],
        generators: Sequence[np.random.Generator | None],
    ) -> np.ndarray:
        """Next token ids, int64 ``[B]``, from ``logits`` float32 ``[B, V]``.

        ``params[i]`` and ``generators[i]`` belong to row ``i``; a greedy row's generator may be
        ``None`` and is not advanced. A sampling row advances its generator by one ``random()``.
        """
        if logits.ndim != 2:
            raise ValueError(f"Sampler: logits must be [B, V], got shape {logits.shape}")
        batch, vocab = logits.shape
        if len(params) != batch or len(generators) != batch:
            raise ValueError(
                f"Sampler: got {batch} logits rows but {len(params)} params and {len(generators)} "
                f"generators; pass one of each per row."
            )
        greedy = np.array([p.greedy for p in params], dtype=bool)
        if greedy.all():  # read in place: a masked copy of [B, V] costs as much as the argmax
            return np.argmax(logits, axis=-1).astype(np.int64, copy=False)
        out = np.empty(batch, dtype=np.int64)
        if greedy.any():
            out[greedy] = np.argmax(logits[greedy], axis=-1)
        rows = np.flatnonzero(~greedy)
        if rows.size == 0:
            return out
        for r in rows:
            if generators[r] is None:
                raise ValueError(f"Sampler: row {r} samples (temperature > 0) but its generator is None")

        temperature = np.array([params[r].temperature for r in rows])
        top_k = np.array([min(params[r].top_k, vocab) for r in rows])
        top_p = np.array([params[r].top_p for r in rows])
        x = logits[rows].astype(np.float64) / temperature[:, None]  # x: [S, V]

        # Top-k: drop tokens scoring below the k-th largest (ties with it are kept, as in HF).
        k_rows = np.flatnonzero(top_k > 0)
        if k_rows.size:
            desc = -np.sort(-x[k_rows], axis=-1)  # [K, V]
            kth = desc[np.arange(k_rows.size), top_k[k_rows] - 1]
            sub = x[k_rows]
            sub[sub < kth[:, None]] = -np.inf
            x[k_rows] = sub

        # Top-p: sort ascending, drop the low tail whose cumulative mass is <= 1 - top_p; the
        # most likely token is always kept. What remains is the smallest set with mass >= top_p.
        p_rows = np.flatnonzero(top_p < 1.0)
        if p_rows.size:
            sub = x[p_rows]
            order = np.argsort(sub, axis=-1, kind="stable")  # [P, V] ascending
            cum = np.cumsum(_softmax(np.take_along_axis(sub, order, axis=-1)), axis=-1)
            remove_sorted = cum <= (1.0 - top_p[p_rows])[:, None]
            remove_sorted[:, -1] = False
            remove = np.empty_like(remove_sorted)
            np.put_along_axis(remove, order, remove_sorted, axis=-1)
            sub[remove] = -np.inf
            x[p_rows] = sub

        # Inverse-CDF draw: one uniform per row from that row's own generator.
        probs = _softmax(x)  # [S, V]; 0 where masked
        cdf = np.cumsum(probs, axis=-1)
        u = np.array([generators[r].random() for r in rows]) * cdf[:, -1]
        picked = (cdf <= u[:, None]).sum(axis=-1)  # first index with cdf > u
        last_kept = vocab - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
        out[rows] = np.minimum(picked, last_kept)  # guards u rounding up to cdf[-1]
        return out
