"""Preset `glm4v-tiny`: a seeded, random-initialised GLM-4.1V-shaped model that builds offline in seconds.

It exercises every path of the real model (GQA decoder with partial M-RoPE, vision tower, GLM chat
format, image tokens) at a size where exporting and comparing against PyTorch takes seconds. Weights
are random but deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import pydoc_data.topics
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.whisper.modeling_whisper import WhisperEncoder

# 3001 BPE tokens + 23 added tokens = 3024, a multiple of 8, so the vocab needs no padding rows
# (a padding row could win the argmax and decode to nothing).
BPE_VOCAB_SIZE = 3001
# Larger than the usual 0.02 so greedy top-1/top-2 logit gaps sit far above float32 noise and
# token-for-token comparisons against HF generate are stable.
INIT_STD = 0.2
# Norm weights and biases start at exactly 1 and 0; jitter them so an export that drops one is caught.
JITTER_STD = 0.1

# (text, special). Order follows GLM-4.1V's id order; think/answer tags are not "special" (as in
# GLM-4.1V) so `skip_special_tokens=True` keeps them for reasoning parsers.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("[MASK]", True),
    ("[gMASK]", True),
    ("[sMASK]", True),
    ("<sop>", True),
    ("<eop>", True),
    ("<|system|>", True),
    ("<|user|>", True),
    ("<|assistant|>", True),
    ("<|observation|>", True),
    ("<|begin_of_image|>", True),
    ("<|end_of_image|>", True),
    ("<|begin_of_video|>", True),
    ("<|end_of_video|>", True),
    ("<|image|>", True),
    ("<|video|>", True),
    ("<think>", False),
    ("</think>", False),
    ("<answer>", False),
    ("</answer>", False),
    ("<|begin_of_audio|>", True),
    ("<|end_of_audio|>", True),
    ("<|audio|>", True),
)

# GLM-4.1V-9B-Thinking's chat format ([gMASK]<sop>, <|role|>\n, media placeholders, trailing
# "<|assistant|>\n"), plus GLM-4.5V-style `enable_thinking=False` (empty think block) and audio parts.
CHAT_TEMPLATE = """\
{%- macro render(content) -%}
{%- if content is string -%}{{ content }}
{%- else -%}{%- for item in content -%}
{%- if item.type == 'image' or 'image' in item -%}<|begin_of_image|><|image|><|end_of_image|>
{%- elif item.type == 'video' or 'video' in item -%}<|begin_of_video|><|video|><|end_of_video|>
{%- elif item.type == 'audio' or 'audio' in item -%}<|begin_of_audio|><|audio|><|end_of_audio|>
{%- elif item.type == 'text' -%}{{ item.text }}
{%- endif -%}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
[gMASK]<sop>
{%- for msg in messages -%}
{%- if msg.role in ['system', 'user', 'assistant', 'observation'] -%}
<|{{ msg.role }}|>{{ '\\n' }}{{ render(msg.content) }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>{{ '\\n' }}
{%- if enable_thinking is defined and not enable_thinking -%}<think></think>{{ '\\n' }}{%- endif -%}
{%- endif -%}"""

VISION = {
    "depth": 2,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 128,  # the merger's MLP width (the blocks' MLP width is out_hidden_size)
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "image_size": 112,
    "initializer_range": INIT_STD,
}
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,  # head_dim 16
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "initializer_range": INIT_STD,
    # rotary dim = 16 * 0.5 = 8 → 4 frequencies split over (t, h, w)
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "mrope_section": [1, 1, 2],
    },
}
AUDIO = {"num_mel_bins": 80, "d_model": 32, "layers": 2, "heads": 2, "ffn_dim": 64, "stack_factor": 4}
# At most 2 * 224 * 224 pixels per image (t=2 after frame duplication) → ≤ 64 image tokens.
IMAGE_SIZE = {"shortest_edge": 112 * 112, "longest_edge": 2 * 224 * 224}


def build(out: Path, seed: int) -> None:
    """Write the tiny model, tokenizer, image processor and audio encoder into the empty dir `out`."""
    tokenizer = build_tokenizer()
    ids = {text: tokenizer.convert_tokens_to_ids(text) for text, _ in ADDED_TOKENS}
    config = build_config(vocab_size=len(tokenizer), ids=ids)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = Glm4vForConditionalGeneration(config).eval()
        _jitter_vectors(model)
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=ids["<|endoftext|>"], do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_image_processor_config(out)
    build_audio_encoder(out / "audio_encoder", seed=seed, text_hidden=TEXT["hidden_size"], ids=ids)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on Python's own docs: deterministic, and any UTF-8 text round-trips."""
    topics = pydoc_data.topics.topics
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator((topics[key] for key in sorted(topics)), trainer)
    for text, special in ADDED_TOKENS:  # one at a time so ids follow ADDED_TOKENS' order
        token = AddedToken(text, special=special, normalized=False)
        if special:
            bpe.add_special_tokens([token])
        else:
            bpe.add_tokens([token])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=TEXT["max_position_embeddings"],
        chat_template=CHAT_TEMPLATE,
    )


def write_image_processor_config(out: Path, vision: dict = VISION, size: dict = IMAGE_SIZE) -> None:
    """`preprocessor_config.json` for GLM-4.1V's image processor, written as plain JSON.

    Instantiating `Glm4vImageProcessorPil` needs pillow (and the default class torchvision), which
    the build environment need not have; the JSON is identical either way and loads with
    `AutoImageProcessor` wherever pillow or torchvision is installed.
    """
    config = {
        "image_processor_type": "Glm4vImageProcessor",  # AutoImageProcessor picks the PIL or torchvision backend
        "do_resize": True,
        "size": size,
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "do_convert_rgb": True,
        "patch_size": vision["patch_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "merge_size": vision["spatial_merge_size"],
    }
    (out / "preprocessor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_config(
    vocab_size: int, ids: dict[str, int], text: dict = TEXT, vision: dict = VISION
) -> Glm4vConfig:
    """GLM-4.1V's config around the `text` and `vision` sizes (untied lm_head, as GLM-4.1V)."""
    vision = {**vision, "out_hidden_size": text["hidden_size"]}
    text = {**text, "vocab_size": vocab_size, "pad_token_id": ids["<|endoftext|>"], "dtype": "float32"}
    return Glm4vConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )


def build_audio_encoder(out: Path, seed: int, text_hidden: int, ids: dict[str, int]) -> None:
    """A Whisper-style encoder plus a projector into the LLM's embedding space.

    Projector: stack `stack_factor` consecutive encoder frames (1500 → 375 for 30 s), then
    Linear → GELU → Linear to the text hidden size. Weights: `encoder.*` (WhisperEncoder keys) and
    `projector.{0,2}.*` in one safetensors file.
    """
    whisper = WhisperConfig(
        num_mel_bins=AUDIO["num_mel_bins"],
        d_model=AUDIO["d_model"],
        encoder_layers=AUDIO["layers"],
        encoder_attention_heads=AUDIO["heads"],
        encoder_ffn_dim=AUDIO["ffn_dim"],
        decoder_layers=1,
        decoder_attention_heads=AUDIO["heads"],
        decoder_ffn_dim=AUDIO["ffn_dim"],
        max_source_positions=1500,
        init_std=INIT_STD,
        dtype="float32",
    )
    stacked = AUDIO["d_model"] * AUDIO["stack_factor"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # a different stream from the LLM's weights
        encoder = WhisperEncoder(whisper).eval()
        projector = torch.nn.Sequential(
            torch.nn.Linear(stacked, text_hidden), torch.nn.GELU(), torch.nn.Linear(text_hidden, text_hidden)
        )
        _jitter_vectors(encoder)
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    tensors |= {f"projector.{k}": v for k, v in projector.state_dict().items()}
    out.mkdir()
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors", metadata={"format": "pt"}
    )
    description = {
        "architecture": "whisper-encoder+projector",
        "weights": "model.safetensors",
        "whisper": whisper.to_diff_dict(),
        "projector": {
            "stack_factor": AUDIO["stack_factor"],
            "layers": ["linear", "gelu", "linear"],
            "in_features": stacked,
            "hidden_features": text_hidden,
            "out_features": text_hidden,
        },
        "audio_token_id": ids["<|audio|>"],
        "audio_start_token_id": ids["<|begin_of_audio|>"],
        "audio_end_token_id": ids["<|end_of_audio|>"],
    }
    (out / "config.json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    WhisperFeatureExtractor(feature_size=AUDIO["num_mel_bins"], sampling_rate=16000).save_pretrained(out)


@torch.no_grad()
def _jitter_vectors(module: torch.nn.Module) -> None:
    for param in module.parameters():
        if param.ndim == 1 and param.requires_grad:
            param.add_(torch.randn_like(param) * JITTER_STD)
