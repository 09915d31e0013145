"""Preset `autoglm-phone-9b-shape`: AutoGLM-Phone-9B's real configuration and a tokenizer, no weights.

AutoGLM-Phone-9B is a GLM-4.1V-9B (`Glm4vForConditionalGeneration`, `model_type: glm4v`) fine-tune:
its config.json is GLM-4.1V-9B's. Its fp32 weights (~41 GB) do not fit this machine, so this
directory carries the exact sizes only, for `build --backend tensorrt --check-only`, which exports
and checks the real graphs with weights that are never materialised (builder/build/shape_only.py).
A full build refuses it (builder/model_dir.py). The real model has no audio encoder; neither has this.

Sources of the values below (checked against each other):
- zai-org/GLM-4.1V-9B-Thinking's config.json on Hugging Face, whose values are the defaults of
  transformers' `Glm4vTextConfig` / `Glm4vVisionConfig` / `Glm4vConfig`
  (transformers/models/glm4v/configuration_glm4v.py, documented as that checkpoint): text 40 layers,
  hidden 4096, MLP 13696, 32 heads / 2 KV heads, vocab 151,552, RMSNorm eps 1e-5; vision depth 24,
  hidden 1536, 12 heads, patch 14, image 336, MLP 13696, out 4096, merge 2, temporal patch 2;
  media token ids 151339–151344.
- the same config.json for what transformers does not default: 65,536 positions, RoPE θ 10,000,
  partial rotary factor 0.5 with M-RoPE sections (8, 12, 12) (sum 32 = head_dim 128 × 0.5 / 2),
  q/k/v biases, eos ids (151329, 151336, 151338, 151348); also quoted by llama.cpp's GLM-4.1V
  support (ggml-org/llama.cpp PR #16600: "native context length 65,536", "RoPE θ 10,000").
- preprocessor_config.json of the GLM-4.1V family: 112² to 9,633,792 pixels, CLIP mean/std.

The tokenizer is glm4v-tiny's byte-level BPE (GLM's real 151k-token vocabulary is not shipped
here) with GLM-4.1V's special tokens at GLM-4.1V's ids (<|endoftext|> 151329 … <|video|> 151344,
then <think>, </think>, <answer>, </answer>: 151348 = </answer> closes the eos list above).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer
from transformers import GenerationConfig, Glm4vConfig, PreTrainedTokenizerFast

from builder.presets.glm4v_tiny import (
    ADDED_TOKENS,
    CHAT_TEMPLATE,
    build_tokenizer,
    write_image_processor_config,
)

FIRST_SPECIAL_ID = 151_329  # <|endoftext|>; the others follow in ADDED_TOKENS' order
GLM_TOKENS = tuple(t for t in ADDED_TOKENS if "audio" not in t[0])  # GLM-4.1V has no audio tokens

TEXT = {
    "vocab_size": 151_552,
    "hidden_size": 4096,
    "intermediate_size": 13_696,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,  # head_dim 128
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 65_536,
    "rms_norm_eps": 1e-5,
    "attention_bias": True,  # q/k/v carry biases (transformers' Glm4vTextAttention always builds them)
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10_000.0,
        "partial_rotary_factor": 0.5,  # rotary dim 64 of head_dim 128
        "mrope_section": [8, 12, 12],  # (t, h, w) frequencies: 8 + 12 + 12 = 64 / 2
    },
    "pad_token_id": 151_329,
    "eos_token_id": [151_329, 151_336, 151_338, 151_348],
    "dtype": "bfloat16",
}
VISION = {
    "depth": 24,
    "hidden_size": 1536,
    "num_heads": 12,
    "intermediate_size": 13_696,  # the merger's MLP width (the blocks' MLP width is out_hidden_size)
    "out_hidden_size": 4096,
    "patch_size": 14,
    "image_size": 336,
    "in_channels": 3,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
}
MEDIA_TOKEN_IDS = {
    "image_start_token_id": 151_339,
    "image_end_token_id": 151_340,
    "video_start_token_id": 151_341,
    "video_end_token_id": 151_342,
    "image_token_id": 151_343,
    "video_token_id": 151_344,
}
IMAGE_SIZE = {"shortest_edge": 112 * 112, "longest_edge": 9_633_792}


def build(out: Path) -> None:
    """Write config.json, generation_config.json, the tokenizer and the image processor config (no weights)."""
    tokenizer = build_glm_tokenizer()
    ids = {text: tokenizer.convert_tokens_to_ids(text) for text, _ in GLM_TOKENS}
    assert ids["<|image|>"] == MEDIA_TOKEN_IDS["image_token_id"], ids  # the tokenizer matches the config
    config = Glm4vConfig(
        text_config=TEXT, vision_config=VISION, tie_word_embeddings=False, dtype="bfloat16", **MEDIA_TOKEN_IDS
    )
    config.architectures = ["Glm4vForConditionalGeneration"]
    config.save_pretrained(out)
    generation = GenerationConfig(eos_token_id=TEXT["eos_token_id"], pad_token_id=TEXT["pad_token_id"])
    generation.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_image_processor_config(out, VISION, IMAGE_SIZE)


def build_glm_tokenizer() -> PreTrainedTokenizerFast:
    """glm4v-tiny's BPE, its special tokens moved to GLM-4.1V's ids (the ids in between stay unused)."""
    state = json.loads(build_tokenizer().backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    added = []
    for offset, (text, _) in enumerate(GLM_TOKENS):
        entry = next(e for e in state["added_tokens"] if e["content"] == text)
        # In the model's vocabulary too: the added vocabulary takes a token's id from there.
        entry["id"] = vocab[text] = FIRST_SPECIAL_ID + offset
        added.append(entry)
    state["added_tokens"] = added
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=TEXT["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
    )
