"""Greedy generation from our engines equals Hugging Face `generate`, token for token."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from builder.model_dir import open_model_dir
from runtime.errors import PromptTooLongError
from runtime.llm_engine import LLMEngine
from runtime.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 5, 8,",
    "你好，世界",
]
MAX_NEW = 24


@functools.cache
def hf_model(model_dir):
    return open_model_dir(model_dir).load()


def hf_greedy(
    model_dir, prompt_ids: list[int], stop_ids: tuple[int, ...], max_new: int = MAX_NEW
) -> list[int]:
    """Reference: Hugging Face generate, one prompt at a time, no padding."""
    with torch.no_grad():
        out = hf_model(model_dir).generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=list(stop_ids),
            pad_token_id=stop_ids[0],
        )
    return out[0, len(prompt_ids) :].tolist()


def test_greedy_equals_hf_one_prompt_at_a_time(built):
    model_dir, engines = built
    generator = LLMEngine(engines, precision="fp32")
    params = SamplingParams(max_tokens=MAX_NEW, stop_token_ids=generator.tokenizer.stop_token_ids)
    for text in PROMPTS:
        ids = generator.tokenizer.encode(text)
        ((ours, _),) = generator.generate_ids([ids], params)
        assert ours == hf_greedy(model_dir, ids, params.stop_token_ids), text


def test_batch_of_different_lengths_equals_hf(built):
    model_dir, engines = built
    generator = LLMEngine(engines, precision="fp32")
    params = SamplingParams(max_tokens=MAX_NEW, stop_token_ids=generator.tokenizer.stop_token_ids)
    prompts = [generator.tokenizer.encode(text) for text in PROMPTS]
    assert len({len(p) for p in prompts}) >= 3, "the batch must mix prompt lengths"
    results = generator.generate_ids(prompts, params)
    for ids, (ours, _) in zip(prompts, results, strict=True):
        assert ours == hf_greedy(model_dir, ids, params.stop_token_ids)


def test_more_prompts_than_max_batch(glm4v_tiny_model, glm4v_tiny_engines):
    generator = LLMEngine(glm4v_tiny_engines, precision="fp32")
    params = SamplingParams(max_tokens=6, stop_token_ids=generator.tokenizer.stop_token_ids)
    prompts = [generator.tokenizer.encode(f"item number {i} is") for i in range(11)]
    results = generator.generate_ids(prompts, params)
    assert len(results) == 11
    for ids, (ours, _) in zip(prompts, results, strict=True):
        assert ours == hf_greedy(glm4v_tiny_model, ids, params.stop_token_ids, max_new=6)
    assert generator.kv.num_free_blocks == generator.kv.num_blocks - 1, "all blocks returned"


def test_chat_template_stops_at_end_of_turn(smollm2_model, smollm2_engines):
    generator = LLMEngine(smollm2_engines, precision="fp32")
    params = SamplingParams(max_tokens=64)
    (completion,) = generator.generate(["What is 2 + 2? Answer in one short sentence."], params, chat=True)
    reference = hf_greedy(smollm2_model, completion.prompt_token_ids, generator.tokenizer.stop_token_ids, 64)
    assert completion.token_ids == reference
    assert completion.finish_reason == "stop"
    assert completion.token_ids[-1] in generator.tokenizer.stop_token_ids
    assert "4" in completion.text


def test_fp16_engine_tracks_fp32(smollm2_engines):
    """fp16 vs fp32 on a real model, teacher-forced over the same text."""
    fp32 = LLMEngine(smollm2_engines, precision="fp32")
    fp16 = LLMEngine(smollm2_engines, precision="fp16")
    ids = fp32.tokenizer.encode(" ".join(PROMPTS[:4]) * 2)
    a, b = fp32.score(ids), fp16.score(ids)
    cosine = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cosine.min() > 0.995, cosine.min()
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.9


def test_seeded_sampling_is_reproducible_and_batch_independent(glm4v_tiny_engines):
    generator = LLMEngine(glm4v_tiny_engines, precision="fp32")
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, seed=1234, max_tokens=12)
    prompt = generator.tokenizer.encode("Sampling test prompt")
    first = generator.generate_ids([prompt], params)
    assert first == generator.generate_ids([prompt], params)
    other = generator.generate_ids([prompt], SamplingParams(temperature=0.8, seed=99, max_tokens=12))
    assert other != first


def test_prompt_longer_than_built_maximum_is_refused(glm4v_tiny_engines):
    generator = LLMEngine(glm4v_tiny_engines, precision="fp32")
    with pytest.raises(PromptTooLongError, match="at most"):
        generator.generate_ids([[5] * (generator.limits.max_seq_len + 1)], SamplingParams())


def test_generation_stops_at_built_maximum(glm4v_tiny_engines):
    generator = LLMEngine(glm4v_tiny_engines, precision="fp32")
    limit = generator.limits.max_seq_len
    prompt = [7] * (limit - 3)
    ((tokens, reason),) = generator.generate_ids([prompt], SamplingParams(max_tokens=50))
    assert len(prompt) + len(tokens) == limit
    assert reason == "length"
