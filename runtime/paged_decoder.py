"""One engine call over a batch of sequences whose K/V live in the engine's paged pool.

The decoder builds the call's inputs (token ids, positions, past lengths, block tables, logit
index, media rows) and the slot mapping of its new tokens; the engine reads K/V from the pool it
owns and writes the new K/V into it (runtime/kv/pool.py). Pool memory never passes through here.
A pool that keeps sequences in slots (runtime/kv/slot_pool.py) says in which order the rows run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import decoder_io as io
from runtime.engines.base import Engine
from runtime.errors import RuntimeUserError
from runtime.kv import KVCacheManager
from runtime.kv.pool import KVPoolSpec, SlotMapping


@dataclass(frozen=True)
class DecoderLimits:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    position_rank: int
    max_batch: int
    max_seq_len: int
    block_size: int
    hidden_size: int = 0  # width of media_embeds rows (decoders of models with encoders)

    @classmethod
    def from_manifest(cls, decoder: dict) -> DecoderLimits:
        return cls(**{name: decoder[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class StepInput:
    """New tokens for one sequence; its first `past_len` tokens are already in the pool."""

    request_id: str
    token_ids: list[int]
    past_len: int
    positions: np.ndarray | None = None  # [rank, n] rope positions; None = past_len + arange(n)
    # Encoder output rows [k, H] float32 replacing the embeddings of token_ids[media_index] ([k] ints).
    media_embeds: np.ndarray | None = None
    media_index: np.ndarray | None = None


class PagedTextDecoder:
    def __init__(self, engine: Engine, limits: DecoderLimits, kv: KVCacheManager) -> None:
        self.engine = engine
        self.limits = limits
        self.kv = kv
        self.pool = engine.create_kv_pool(
            KVPoolSpec(
                num_layers=limits.num_layers,
                num_blocks=kv.num_blocks,
                block_size=limits.block_size,
                num_kv_heads=limits.num_kv_heads,
                head_dim=limits.head_dim,
                dtype=engine.input_dtypes[io.POOL_DTYPE_INPUT],
                max_batch=limits.max_batch,
                max_seq_len=limits.max_seq_len,
            )
        )
        # Decoders of models with encoders take media rows (runtime/decoder_io.py); text-only
        # steps feed one zero row and no row indices, which costs nothing measurable.
        self.media_dtype = engine.input_dtypes.get(io.MEDIA_EMBEDS)
        if self.media_dtype is not None:
            self.no_media = np.zeros((1, limits.hidden_size), self.media_dtype)

    def step(self, batch: list[StepInput], all_logits: bool = False) -> np.ndarray:
        """Run the new tokens of every sequence; the caller has allocated their slots.

        Returns logits float32 [B, V] at each sequence's last new token, or [B, S, V] at every
        position when `all_logits` (for scoring).
        """
        assert 0 < len(batch) <= self.limits.max_batch, "callers split batches at max_batch"
        size, seq = len(batch), max(len(item.token_ids) for item in batch)
        one_at_a_time = not self.engine.batched_prefill or (
            not self.engine.batched_prefill_with_past and any(i.past_len for i in batch)
        )
        if size > 1 and seq > 1 and one_at_a_time:
            return self._one_at_a_time(batch, seq, all_logits)
        # The blocks of the past and of these new tokens (allocated by the caller). A pool that keeps
        # sequences in slots may need the rows in another order (runtime/kv/slot_pool.py).
        bs = self.limits.block_size
        tables = [
            self.kv.block_table(item.request_id)[: -(-(item.past_len + len(item.token_ids)) // bs)]
            for item in batch
        ]
        order = self.pool.place(
            [item.request_id for item in batch],
            tables,
            [item.past_len for item in batch],
            [len(item.token_ids) for item in batch],
        )
        batch, tables = [batch[i] for i in order], [tables[i] for i in order]
        ids = np.zeros((size, seq), np.int64)
        positions = np.zeros((self.limits.position_rank, size, seq), np.int64)
        lengths = np.array([len(item.token_ids) for item in batch])
        past = np.array([item.past_len for item in batch], np.int64)
        for row, item in enumerate(batch):
            n = len(item.token_ids)
            ids[row, :n] = item.token_ids
            positions[:, row, :n] = item.past_len + np.arange(n) if item.positions is None else item.positions
        if all_logits:
            logit_index = np.broadcast_to(np.arange(seq), (size, seq)).copy()
        else:
            logit_index = (lengths - 1)[:, None]
        feeds = {
            io.INPUT_IDS: ids,
            io.POSITION_IDS: positions if self.limits.position_rank == 3 else positions[0],
            io.PAST_LENS: past,
            io.BLOCK_TABLES: KVCacheManager.padded_block_tables(tables),
            io.LOGIT_INDEX: logit_index.astype(np.int64),
            **self._media_feeds(batch, seq),
        }
        logits = self.engine.run_step(feeds, self.pool, self.slot_mapping(batch))
        if not all_logits:
            logits = logits[:, 0]  # a view: the engine's result is this call's own array
        if (order == np.arange(size)).all():
            return logits
        return logits[np.argsort(order)]

    def _one_at_a_time(self, batch: list[StepInput], seq: int, all_logits: bool) -> np.ndarray:
        results = [self.step([item], all_logits) for item in batch]
        if not all_logits:
            return np.concatenate(results)  # [B, V]
        logits = np.zeros((len(batch), seq, results[0].shape[-1]), np.float32)
        for row, result in enumerate(results):  # [1, n, V], right-padded to seq like a batched call
            logits[row, : result.shape[1]] = result[0]
        return logits

    def _media_feeds(self, batch: list[StepInput], seq: int) -> dict[str, np.ndarray]:
        with_media = [item for item in batch if item.media_embeds is not None and len(item.media_embeds)]
        if self.media_dtype is None:
            if with_media:
                raise RuntimeUserError("these engines' text decoder takes no image or audio embeddings")
            return {}
        rows = np.full((len(batch), seq), -1, np.int64)
        chunks, offset = [], 0
        for row, item in enumerate(batch):
            if item.media_embeds is not None and len(item.media_embeds):
                rows[row, item.media_index] = offset + np.arange(len(item.media_embeds))
                chunks.append(item.media_embeds)
                offset += len(item.media_embeds)
        embeds = np.concatenate(chunks).astype(self.media_dtype, copy=False) if chunks else self.no_media
        return {io.MEDIA_EMBEDS: embeds, io.MEDIA_ROWS: rows}

    def slot_mapping(self, batch: list[StepInput]) -> SlotMapping:
        """Where each new token's K/V go: the blocks the caller allocated, from position past_len."""
        return SlotMapping.build(
            [self.kv.slot_mapping(item.request_id, item.past_len, len(item.token_ids)) for item in batch]
        )
