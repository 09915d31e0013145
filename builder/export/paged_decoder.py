"""The exportable text decoder: one graph for prefill and decode over a paged KV pool.

Inputs (B ≤ 8 sequences, S new tokens each, right-padded):
    input_ids      int64 [B, S]
    position_ids   int64 [B, S]  (or [3, B, S] for GLM-4V's multimodal rope)
    past_lens      int64 [B]     tokens already in the pool for each sequence
    block_tables   int64 [B, M]  pool block ids holding those tokens (padded with block 0)
    logit_index    int64 [B, T]  which of the S positions to return logits for
    key_cache.{l}, value_cache.{l}   [NB, bs, KVH, D] per layer: the pool, read-only here
    media_embeds   float [M, H], media_rows int64 [B, S]  (only with `media=True`, i.e. models
                   with encoders): rows spliced over the token embeddings where media_rows ≥ 0
Outputs:
    logits         float32 [B, T, V]
    new_kv         [L, 2, B, S, KVH, D]  this call's K/V; the runtime writes it into the pool

Pipeline stages (`decoder_stage`, `build --pipeline-stages N`) run a contiguous range of the
layers: the first stage ends with hidden_out [B, S, H] instead of logits, later ones start from
hidden_in [B, S, H] instead of input_ids (runtime/decoder_io.py); each takes its own layers' pool.

Past K/V are read with a plain Gather over the block tables, so the same graph runs on ONNX
Runtime and TensorRT without a paged-attention plugin. Padded query rows produce garbage the
runtime ignores; valid rows never attend to them (causal mask on the new tokens).
"""

from __future__ import annotations

import torch
from torch import nn

from builder.export.families import DecoderFamily
from runtime import decoder_io as io


def paged_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    past_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    # q: [B, H, S, D]; k_new, v_new: [B, KVH, S, D]; caches: [NB, bs, KVH, D]
    batch, num_heads, seq, dim = q.shape
    num_kv_heads = k_new.shape[1]
    groups = num_heads // num_kv_heads
    # A plain Gather of whole blocks: [B*M, bs, KVH, D] -> [B, KVH, P=M*bs, D]
    blocks = block_tables.flatten()
    k_past = k_cache.index_select(0, blocks).view(batch, -1, num_kv_heads, dim).transpose(1, 2)
    v_past = v_cache.index_select(0, blocks).view(batch, -1, num_kv_heads, dim).transpose(1, 2)
    past = k_past.shape[2]
    k = torch.cat([k_past, k_new], dim=2)  # [B, KVH, T=P+S, D]
    v = torch.cat([v_past, v_new], dim=2)
    # Grouped-query attention without copying K/V: heads h = kvh * groups + g, so each KV head
    # serves a [G*S] block of query rows. 4-D so ONNX Runtime fuses K's transpose into the MatMul.
    q = q.reshape(batch, num_kv_heads, groups * seq, dim)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, KVH, G*S, T]

    past_visible = torch.arange(past, device=q.device)[None, :] < past_lens[:, None]  # [B, P]
    positions = torch.arange(seq, device=q.device)
    causal = positions[None, :] <= positions[:, None]  # [S, S]
    visible = torch.cat(
        [past_visible[:, None, :].expand(batch, seq, past), causal[None].expand(batch, seq, seq)], dim=-1
    )  # [B, S, T]
    scores = scores.view(batch, num_kv_heads, groups, seq, -1)
    scores = scores.masked_fill(~visible[:, None, None], torch.finfo(torch.float32).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype).view(batch, num_kv_heads, groups * seq, -1)
    out = torch.matmul(probs, v).view(batch, num_kv_heads, groups, seq, dim)
    return out.permute(0, 3, 1, 2, 4).reshape(batch, seq, num_heads * dim)


class PagedDecoder(nn.Module):
    """Wraps a Hugging Face causal LM's own modules; see the module docstring for the I/O.

    `layers` a range of the model's layers makes one pipeline stage (runtime/decoder_io.py): the
    first stage embeds, the last adds the final norm and logits, and each holds only its own
    modules, so a stage's graph carries only its own weights. `decoder_stage` picks the class
    whose forward takes that stage's inputs."""

    def __init__(
        self, model: nn.Module, family: DecoderFamily, media: bool = False, layers: range | None = None
    ) -> None:
        super().__init__()
        self.family = family
        self.shape = family.shape(model.config)
        text = family.text_model(model)
        self.layer_range = layers if layers is not None else range(len(text.layers))
        self.first = self.layer_range.start == 0
        self.last = self.layer_range.stop == len(text.layers)
        self.media = media and self.first
        self.num_layers = len(self.layer_range)
        self.layers = text.layers[self.layer_range.start : self.layer_range.stop]
        self.rotary_emb = text.rotary_emb
        if self.first:
            self.embed_tokens = text.embed_tokens
        if self.last:
            self.norm = text.norm
            self.lm_head = model.lm_head
        self.embed_scale = float(text.embed_tokens.weight.detach().std())  # media rows' test scale
        self.scale = self.shape.head_dim**-0.5

    def input_names(self) -> list[str]:
        return io.input_names(self.num_layers, self.media, self.first, self.last)

    def output_names(self) -> list[str]:
        return io.output_names(self.last)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        past_lens: torch.Tensor,
        block_tables: torch.Tensor,
        logit_index: torch.Tensor,
        kv_cache: list[torch.Tensor],
        media_embeds: torch.Tensor | None = None,
        media_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embed(input_ids, media_embeds, media_rows)
        hidden, new_kv = self.run_layers(hidden, position_ids, past_lens, block_tables, kv_cache)
        return self.head(hidden, logit_index), new_kv

    def embed(
        self, input_ids: torch.Tensor, media_embeds: torch.Tensor | None, media_rows: torch.Tensor | None
    ) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)  # [B, S, E]
        if media_rows is not None:
            # A Gather and a Where: cheap, and portable to TensorRT (no scatter).
            # Where, not clamp: TensorRT's Clip takes floats only, and media_rows is int64.
            rows = torch.where(media_rows >= 0, media_rows, 0).flatten()
            picked = media_embeds.index_select(0, rows).view_as(hidden)
            hidden = torch.where((media_rows >= 0)[..., None], picked.to(hidden.dtype), hidden)
        return hidden

    def run_layers(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        past_lens: torch.Tensor,
        block_tables: torch.Tensor,
        kv_cache: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This decoder's layers over `hidden`; returns the hidden states and new_kv [L, 2, B, S, KVH, D]."""
        rope = self.rotary_emb(hidden, position_ids)  # cos, sin: [B, S, rotary_dim]
        batch, seq, _ = hidden.shape
        new_kv: list[torch.Tensor] = []

        for index, layer in enumerate(self.layers):
            k_cache, v_cache = kv_cache[2 * index], kv_cache[2 * index + 1]

            def attend(attn: nn.Module, x: torch.Tensor, rope, k_cache=k_cache, v_cache=v_cache):
                d = self.shape.head_dim
                q = attn.q_proj(x).view(batch, seq, -1, d).transpose(1, 2)  # [B, H, S, D]
                k = attn.k_proj(x).view(batch, seq, -1, d).transpose(1, 2)  # [B, KVH, S, D]
                v = attn.v_proj(x).view(batch, seq, -1, d).transpose(1, 2)
                q, k = self.family.apply_rope(q, k, *rope)
                new_kv.append(torch.stack([k, v]).transpose(2, 3))  # [2, B, S, KVH, D]
                out = paged_attention(q, k, v, k_cache, v_cache, block_tables, past_lens, self.scale)
                return attn.o_proj(out)

            hidden = self.family.run_layer(layer, hidden, attend, rope)
        return hidden, torch.stack(new_kv)

    def head(self, hidden: torch.Tensor, logit_index: torch.Tensor) -> torch.Tensor:
        picked = torch.gather(hidden, 1, logit_index[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.lm_head(self.norm(picked)).float()  # [B, T, V]


class FirstStage(PagedDecoder):
    def forward(self, input_ids, position_ids, past_lens, block_tables, kv_cache,
                media_embeds=None, media_rows=None):  # fmt: skip
        hidden = self.embed(input_ids, media_embeds, media_rows)
        return self.run_layers(hidden, position_ids, past_lens, block_tables, kv_cache)


class MiddleStage(PagedDecoder):
    def forward(self, hidden_in, position_ids, past_lens, block_tables, kv_cache):
        return self.run_layers(hidden_in, position_ids, past_lens, block_tables, kv_cache)


class LastStage(PagedDecoder):
    def forward(self, hidden_in, position_ids, past_lens, block_tables, logit_index, kv_cache):
        hidden, new_kv = self.run_layers(hidden_in, position_ids, past_lens, block_tables, kv_cache)
        return self.head(hidden, logit_index), new_kv


def stage_ranges(num_layers: int, stages: int) -> list[range]:
    """Contiguous layer ranges, as even as they go (earlier stages take the extra layer)."""
    if not 1 <= stages <= num_layers:
        raise ValueError(f"{stages} pipeline stages over {num_layers} layers")
    sizes = [num_layers // stages + (index < num_layers % stages) for index in range(stages)]
    starts = [sum(sizes[:index]) for index in range(stages)]
    return [range(start, start + size) for start, size in zip(starts, sizes, strict=True)]


def decoder_stage(
    model: nn.Module, family: DecoderFamily, media: bool, layers: range | None = None
) -> PagedDecoder:
    """The single-graph decoder (`layers` None or every layer), or the stage over `layers`."""
    count = len(family.text_model(model).layers)
    layers = layers if layers is not None else range(count)
    first, last = layers.start == 0, layers.stop == count
    kind = PagedDecoder if first and last else FirstStage if first else LastStage if last else MiddleStage
    return kind(model, family, media, layers)
