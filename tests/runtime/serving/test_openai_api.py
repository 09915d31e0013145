"""The OpenAI API through the real gateway and tritonserver, with the `openai` client.

Expected texts come from the static generator (runtime/llm_engine.py, itself checked token for
token against Hugging Face) on the same rendered prompt, greedy.
"""

from __future__ import annotations

import functools

import httpx
import pytest
from openai import OpenAI

from runtime.llm_engine import LLMEngine
from runtime.reasoning import ReasoningSplitter, ThinkTokens
from runtime.sampling import SamplingParams

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def smollm2(smollm2_server):
    return OpenAI(base_url=smollm2_server.base_url, api_key=smollm2_server.api_key, max_retries=0)


@pytest.fixture(scope="module")
def glm4v(glm4v_server):
    return OpenAI(base_url=glm4v_server.base_url, api_key="EMPTY", max_retries=0)


@functools.cache
def generator_for(engines) -> LLMEngine:
    return LLMEngine(engines, threads=1)


def reference(engines, messages, max_tokens, **template_kwargs):
    """(generator, prompt ids, generated ids, finish reason): greedy, for the chat-rendered prompt."""
    generator = generator_for(engines)
    hf = generator.tokenizer.hf
    rendered = hf.apply_chat_template(messages, tokenize=False, **template_kwargs)
    prompt = hf.encode(rendered, add_special_tokens=False)
    params = SamplingParams(max_tokens=max_tokens, stop_token_ids=generator.tokenizer.stop_token_ids)
    ((ids, reason),) = generator.generate_ids([prompt], params)
    return generator, prompt, ids, reason


def split(generator, prompt, ids):
    """What the server should answer: (content, reasoning), split on the <think> token ids."""
    hf = generator.tokenizer.hf
    think = ThinkTokens.from_tokenizer(hf)
    splitter = ReasoningSplitter(think, prompt) if think else None
    parts = {"content": [], "reasoning": []}
    for token in ids:
        if token in generator.tokenizer.stop_token_ids:
            continue
        route = splitter.route(token) if splitter else "content"
        if route:
            parts[route].append(token)
    return hf.decode(parts["content"], skip_special_tokens=True), hf.decode(
        parts["reasoning"], skip_special_tokens=True
    )


def stream_chat(client, **kwargs):
    content, reasoning, finish, usage = [], [], None, None
    for chunk in client.chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **kwargs
    ):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            finish = choice.finish_reason or finish
    return "".join(content), "".join(reasoning), finish, usage


def test_chat_streaming_and_not_equal_the_reference(smollm2, smollm2_server):
    generator, prompt, ids, reason = reference(
        smollm2_server.engines, QUESTION, 24, add_generation_prompt=True
    )
    expected, _ = split(generator, prompt, ids)
    whole = smollm2.chat.completions.create(
        model=smollm2_server.model, messages=QUESTION, max_tokens=24, temperature=0
    )
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason == reason
    assert whole.usage.prompt_tokens == len(prompt) and whole.usage.completion_tokens == len(ids)
    content, _, finish, usage = stream_chat(
        smollm2, model=smollm2_server.model, messages=QUESTION, max_tokens=24, temperature=0
    )
    assert (content, finish) == (expected, reason)
    assert usage.completion_tokens == len(ids)


@pytest.mark.parametrize(
    "how",
    [
        {"extra_body": {"enable_thinking": False}},
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
    ],
)
def test_thinking_off_renders_an_empty_think_block(glm4v, glm4v_server, how):
    generator, prompt, ids, _ = reference(
        glm4v_server.engines, QUESTION, 12, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt[-3:-1] == [3017, 3018]  # the template closed the think block itself
    content, reasoning = split(generator, prompt, ids)
    response = glm4v.chat.completions.create(
        model=glm4v_server.model, messages=QUESTION, max_tokens=12, temperature=0, **how
    )
    assert response.usage.prompt_tokens == len(prompt)
    assert response.choices[0].message.content == content
    assert response.choices[0].message.reasoning_content == (reasoning or None)


def test_thinking_on_streams_reasoning_content(glm4v, glm4v_server):
    # Continue an assistant turn that opened <think>: everything generated is reasoning until </think>.
    messages = [*QUESTION, {"role": "assistant", "content": "<think>让我想想"}]
    generator, prompt, ids, _ = reference(
        glm4v_server.engines, messages, 16, add_generation_prompt=False, continue_final_message=True
    )
    content, reasoning = split(generator, prompt, ids)
    assert reasoning  # random weights rarely emit </think>, so this is the reasoning channel
    body = {"enable_thinking": True, "return_reasoning": True, "continue_final_message": True}
    args = {
        "model": glm4v_server.model,
        "messages": messages,
        "max_tokens": 16,
        "temperature": 0,
        "extra_body": body,
    }
    got_content, got_reasoning, _, _ = stream_chat(glm4v, **args)
    assert (got_content, got_reasoning) == (content, reasoning)
    whole = glm4v.chat.completions.create(**args).choices[0].message
    assert (whole.content, whole.reasoning_content) == (content, reasoning)
    hidden = glm4v.chat.completions.create(**{**args, "extra_body": {**body, "return_reasoning": False}})
    assert getattr(hidden.choices[0].message, "reasoning_content", None) is None


def test_completions_models_health_and_metrics(smollm2, smollm2_server):
    generator = generator_for(smollm2_server.engines)
    prompt = generator.tokenizer.hf.encode("The capital of France is")
    ((ids, _),) = generator.generate_ids(
        [prompt], SamplingParams(max_tokens=8, stop_token_ids=generator.tokenizer.stop_token_ids)
    )
    text = smollm2.completions.create(
        model=smollm2_server.model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert text.choices[0].text == generator.tokenizer.decode(ids)
    streamed = "".join(
        c.choices[0].text
        for c in smollm2.completions.create(
            model=smollm2_server.model,
            prompt="The capital of France is",
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert streamed == text.choices[0].text
    assert [m.id for m in smollm2.models.list()] == [smollm2_server.model]
    assert httpx.get(f"{smollm2_server.root}/health").status_code == 200
    metrics = httpx.get(f"{smollm2_server.root}/metrics").text
    for name in (
        "autoglm_time_to_first_token_seconds_count",
        "autoglm_inter_token_latency_seconds_count",
        "autoglm_running_sequences",
        "autoglm_waiting_sequences",
        "autoglm_kv_cache_usage_ratio",
        "autoglm_prefix_cache_hit_rate",
        'autoglm_requests_total{endpoint="/v1/completions",status="200"}',
    ):
        assert name in metrics


def test_sse_wire_format_ends_with_done(smollm2_server):
    body = {"model": smollm2_server.model, "messages": QUESTION, "max_tokens": 3, "stream": True, "seed": 3}
    with httpx.stream(
        "POST",
        f"{smollm2_server.base_url}/chat/completions",
        json=body,
        headers=smollm2_server.headers(),
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
