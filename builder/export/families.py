"""Decoder families: where each Hugging Face architecture keeps its parts, and how a layer runs.

The paged decoder (paged_decoder.py) owns attention and the KV cache; a family supplies the
rest from the model's own modules and rotary functions, so exported graphs use the original
weights and maths. Families are chosen by `config.model_type`, never by file names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.glm4v import modeling_glm4v
from transformers.models.llama import modeling_llama

from builder.errors import ModelDirError

AttentionFn = Callable[[nn.Module, torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class DecoderShape:
    """The sizes the runtime needs to allocate a KV pool and feed the graph."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int


@dataclass(frozen=True)
class DecoderFamily:
    """How one architecture's text decoder is laid out.

    `position_rank` is 2 for `position_ids [B, S]` and 3 for GLM-4V's multimodal rope
    `position_ids [3, B, S]` (temporal, height, width; equal for text tokens).
    """

    name: str
    position_rank: int
    text_model: Callable[[nn.Module], nn.Module]
    apply_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    run_layer: Callable[
        [nn.Module, torch.Tensor, AttentionFn, tuple[torch.Tensor, torch.Tensor]], torch.Tensor
    ]
    head_dim: Callable[[object], int]
    model_class: type

    def shape(self, config: object) -> DecoderShape:
        text = getattr(config, "text_config", config)
        return DecoderShape(
            num_layers=text.num_hidden_layers,
            num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads,
            head_dim=self.head_dim(text),
            hidden_size=text.hidden_size,
            vocab_size=text.vocab_size,
            max_position_embeddings=text.max_position_embeddings,
        )


def _llama_layer(layer: nn.Module, x: torch.Tensor, attend: AttentionFn, rope) -> torch.Tensor:
    h = x + attend(layer.self_attn, layer.input_layernorm(x), rope)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def _glm4v_layer(layer: nn.Module, x: torch.Tensor, attend: AttentionFn, rope) -> torch.Tensor:
    # GLM-4 normalises the outputs of attention and MLP too ("sandwich" norms).
    h = x + layer.post_self_attn_layernorm(attend(layer.self_attn, layer.input_layernorm(x), rope))
    return h + layer.post_mlp_layernorm(layer.mlp(layer.post_attention_layernorm(h)))


LLAMA = DecoderFamily(
    name="llama",
    position_rank=2,
    text_model=lambda model: model.model,
    apply_rope=modeling_llama.apply_rotary_pos_emb,
    run_layer=_llama_layer,
    head_dim=lambda c: getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
    model_class=modeling_llama.LlamaForCausalLM,
)

GLM4V = DecoderFamily(
    name="glm4v",
    position_rank=3,
    text_model=lambda model: model.model.language_model,
    apply_rope=modeling_glm4v.apply_rotary_pos_emb,
    run_layer=_glm4v_layer,
    # Glm4vTextAttention derives head_dim from hidden_size and ignores config.head_dim.
    head_dim=lambda c: c.hidden_size // c.num_attention_heads,
    model_class=modeling_glm4v.Glm4vForConditionalGeneration,
)

FAMILIES: dict[str, DecoderFamily] = {"llama": LLAMA, "glm4v": GLM4V}


def family_for(model_type: str) -> DecoderFamily:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise ModelDirError(
            f"model_type {model_type!r} is not supported; supported decoder families: "
            f"{', '.join(sorted(FAMILIES))} (GLM-4.1V / AutoGLM-Phone checkpoints are 'glm4v')"
        ) from None
