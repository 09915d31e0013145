"""Calibration feeds for the text decoder: each text sample is one prefill (batch 1, no past).

Samples are tokenized with the model's own tokenizer and cut to `MAX_TOKENS`; the KV pool is just
the null block (past 0), and logits are taken at the last position only. Inputs the decoder
contract does not name (e.g. embeddings spliced in for media tokens) get zeros / False, so a graph
that grows an input keeps calibrating on text.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from builder.config import CalibrationConfig
from builder.model_dir import ModelDir
from calibration.feeds import CalibrationSet, Feed, GraphInput, digest_of, filler
from calibration.readers import text_samples
from runtime import decoder_io as io

MAX_TOKENS = 256
MEDIA_ROWS = getattr(io, "MEDIA_ROWS", "media_rows")  # models with encoders


def _tokenize(model_dir: ModelDir, cfg: CalibrationConfig) -> tuple[str, list[list[int]]]:
    from transformers import AutoTokenizer

    samples = text_samples(cfg.data, cfg.samples)
    tokenizer = AutoTokenizer.from_pretrained(model_dir.path)
    limit = min(MAX_TOKENS, model_dir.family.shape(model_dir.load_config()).max_position_embeddings)
    return samples.description, [tokenizer.encode(text)[:limit] for text in samples]


def prefill_feed(inputs: list[GraphInput], token_ids: list[int]) -> Feed:
    """One sequence's prefill from an empty pool, for whatever inputs the graph declares."""
    seq = len(token_ids)
    axes = {"batch": 1, "seq": seq, "blocks": 1, "logit_positions": 1, "pool_blocks": 1}
    feed: Feed = {}
    for graph_input in inputs:
        name = graph_input.name
        if name == io.INPUT_IDS:
            feed[name] = np.asarray([token_ids], np.int64)
        elif name == io.POSITION_IDS:
            positions = np.arange(seq, dtype=np.int64)[None]  # [1, S]
            feed[name] = (
                np.broadcast_to(positions, (3, 1, seq)).copy() if len(graph_input.shape) == 3 else positions
            )
        elif name == io.PAST_LENS:
            feed[name] = np.zeros(1, np.int64)
        elif name == io.BLOCK_TABLES:
            feed[name] = np.zeros((1, 1), np.int64)  # the null block; nothing is read at past 0
        elif name == io.LOGIT_INDEX:
            feed[name] = np.asarray([[seq - 1]], np.int64)
        elif name == MEDIA_ROWS:
            feed[name] = np.full((1, seq), -1, np.int64)  # -1: embed input_ids as usual (text only)
        else:  # KV pool (one empty block) and any input this contract does not know
            feed[name] = filler(graph_input, axes)
    return feed


def text_decoder_calibration(model_dir: ModelDir, cfg: CalibrationConfig) -> CalibrationSet:
    description, tokens = _tokenize(model_dir, cfg)

    def feeds(inputs: list[GraphInput]) -> Iterator[Feed]:
        for ids in tokens:
            yield prefill_feed(inputs, ids)

    digest = digest_of(np.asarray(ids, np.int64).tobytes() for ids in tokens)
    return CalibrationSet(f"{description}, ≤{MAX_TOKENS} tokens each", len(tokens), digest, feeds)
