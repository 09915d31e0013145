"""Preset `glm4v-600m`: a seeded, random-initialised GLM-4.1V model whose fp32 text decoder is over 2 GB.

It exists to exercise what only large models hit (ONNX external data, sharded checkpoints, build
memory) on machines that cannot hold AutoGLM-Phone-9B: GLM's real vocabulary of 151,552 with an
untied lm_head, 2 KV heads and partial M-RoPE as AutoGLM-Phone-9B, hidden 1024 over 16 layers
(≈ 560M parameters, 2.2 GB fp32), and a small vision tower. The tokenizer is glm4v-tiny's; the
embedding and lm_head rows past it keep their full size (and bytes) but tiny lm_head weights, so
greedy decoding picks tokens the tokenizer can print.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GenerationConfig, Glm4vForConditionalGeneration

from builder.presets.glm4v_tiny import (
    ADDED_TOKENS,
    build_config,
    build_tokenizer,
    write_image_processor_config,
)

VOCAB_SIZE = 151_552  # GLM-4.1V's vocabulary
INIT_STD = 0.02  # Hugging Face's default: a 16-layer residual stream stays well inside fp16 range
UNPRINTABLE_ROW_SCALE = 1e-3
SHARD_SIZE = "1GB"  # large checkpoints come sharded with an index; so does this one

VISION = {
    "depth": 2,
    "hidden_size": 256,
    "num_heads": 4,
    "intermediate_size": 1024,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "image_size": 112,
    "initializer_range": INIT_STD,
}
TEXT = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,  # head_dim 64
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "initializer_range": INIT_STD,
    # rotary dim = 64 * 0.5 = 32 → 16 frequencies split over (t, h, w), AutoGLM-Phone-9B's 8:12:12 halved
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "mrope_section": [4, 6, 6],
    },
}


def build(out: Path, seed: int) -> None:
    """Write the model (sharded safetensors + index), tokenizer and image processor into the empty dir `out`."""
    tokenizer = build_tokenizer()
    ids = {text: tokenizer.convert_tokens_to_ids(text) for text, _ in ADDED_TOKENS}
    config = build_config(VOCAB_SIZE, ids, text=TEXT, vision=VISION)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = Glm4vForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer) :] *= UNPRINTABLE_ROW_SCALE
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    model.save_pretrained(out, max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(out)
    write_image_processor_config(out, VISION)
