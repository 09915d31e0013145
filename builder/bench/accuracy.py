"""Accuracy of the fp16 and int8 text decoders against fp32, on held-out English text.

Each held-out passage (the evaluation part of calibration/corpus.py, never used to calibrate) is
scored by every engine in one prefill, giving logits [S, V] at every position. Per precision:
  cosine      mean over positions of cos(logits, logits_fp32)
  top1        share of positions whose argmax equals fp32's
  perplexity  exp(mean next-token negative log-likelihood) over all passages; perplexity_fp32 is
              the same for the fp32 engine, so the two are comparable figure for figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from calibration.corpus import evaluation_passages
from runtime.errors import RuntimeUserError
from runtime.llm_engine import COMPONENT, LLMEngine
from runtime.manifest import Manifest

REFERENCE = "fp32"


@dataclass(frozen=True)
class AccuracyRow:
    component: str
    precision: str
    cosine: float
    top1: float
    perplexity: float
    perplexity_fp32: float
    passages: int
    tokens: int


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def next_token_nll(logits: np.ndarray, token_ids: list[int]) -> float:
    """Sum of −log p(token[t+1] | ≤ t) over the sequence; logits [S, V]."""
    log_probs = _log_softmax(logits[:-1])
    return float(-log_probs[np.arange(len(token_ids) - 1), token_ids[1:]].sum())


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def held_out_token_ids(llm: LLMEngine, passages: int, max_tokens: int) -> list[list[int]]:
    limit = min(max_tokens, llm.limits.max_seq_len - 1)
    encoded = (llm.tokenizer.hf.encode(text)[:limit] for text in evaluation_passages())
    return list(islice((ids for ids in encoded if len(ids) >= 2), passages))


def text_accuracy(
    engines_dir: Path,
    precisions: list[str] | None = None,
    passages: int = 32,
    max_tokens: int = 512,
    threads: int = 0,
) -> list[AccuracyRow]:
    built = Manifest.load(engines_dir).precisions(COMPONENT)
    if REFERENCE not in built:
        raise RuntimeUserError(
            f"{engines_dir} has no fp32 text_decoder, the reference accuracy is measured against; "
            f"build it with `autoglm-trt build ... --precision fp32`"
        )
    wanted = [p for p in (precisions or built) if p != REFERENCE]
    for precision in wanted:
        if precision not in built:
            raise RuntimeUserError(
                f"{engines_dir} has no {precision} text_decoder (built: {', '.join(built)}); "
                f"pick one of those with --precision"
            )
    reference = LLMEngine(engines_dir, REFERENCE, threads=threads)
    others = {p: LLMEngine(engines_dir, p, threads=threads) for p in wanted}
    samples = held_out_token_ids(reference, passages, max_tokens)
    tokens = sum(len(ids) - 1 for ids in samples)
    nll_ref = 0.0
    sums = {p: {"cos": 0.0, "top1": 0, "nll": 0.0, "positions": 0} for p in wanted}
    for ids in samples:
        ref_logits = reference.score(ids)  # [S, V]
        nll_ref += next_token_nll(ref_logits, ids)
        ref_top = ref_logits.argmax(-1)
        for precision, llm in others.items():
            logits = llm.score(ids)
            acc = sums[precision]
            acc["cos"] += float(row_cosines(logits, ref_logits).sum())
            acc["top1"] += int((logits.argmax(-1) == ref_top).sum())
            acc["nll"] += next_token_nll(logits, ids)
            acc["positions"] += len(ids)
    perplexity_ref = float(np.exp(nll_ref / tokens))
    return [
        AccuracyRow(
            component=COMPONENT,
            precision=precision,
            cosine=round(acc["cos"] / acc["positions"], 6),
            top1=round(acc["top1"] / acc["positions"], 6),
            perplexity=round(float(np.exp(acc["nll"] / tokens)), 4),
            perplexity_fp32=round(perplexity_ref, 4),
            passages=len(samples),
            tokens=tokens,
        )
        for precision, acc in sums.items()
    ]


def rows_as_dicts(rows: list[AccuracyRow]) -> list[dict]:
    return [asdict(row) for row in rows]
