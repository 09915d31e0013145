"""logprobs, top_logprobs, echo and n through the real gateway and tritonserver (smollm2-135m).

Logprobs are checked against the same engine scoring the whole answer in one call (its own
precision, so the values agree to float tolerance, not bit for bit); `n` choices against one
greedy answer, and their sharing of the prompt's KV blocks through the prefix cache.
"""

from __future__ import annotations

import json
import uuid

import httpx
import numpy as np
import pytest
from openai import OpenAI

from runtime.logprobs import log_softmax
from tests.runtime.serving.test_openai_api import reference

# The server decodes step by step, the reference scores in one prefill call: int4 MatMulNBits
# accumulates in another order for one row than for many (measured gaps up to 0.011 nats).
LOGPROB_ATOL = 5e-2


@pytest.fixture(scope="module")
def client(smollm2_server):
    return OpenAI(base_url=smollm2_server.base_url, api_key=smollm2_server.api_key, max_retries=0)


def _unique_question() -> list[dict]:
    """A prompt no earlier test sent, so the prefix cache starts cold for it."""
    return [{"role": "user", "content": f"Say something about the code {uuid.uuid4().hex}, briefly."}]


def test_chat_logprobs_match_the_engine_and_streaming(client, smollm2_server, smollm2_engines):
    question = _unique_question()
    answer = client.chat.completions.create(
        model=smollm2_server.model,
        messages=question,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        temperature=0,
    )
    choice = answer.choices[0]
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert len(entries) == answer.usage.completion_tokens - (choice.finish_reason == "stop")
    engine, prompt, ids, _ = reference(smollm2_engines, question, 8, add_generation_prompt=True)
    ids = [i for i in ids if i not in engine.tokenizer.stop_token_ids]
    assert [e.token for e in entries] == [engine.tokenizer.hf.decode([i]) for i in ids]
    scored = log_softmax(engine.score(prompt + ids))
    for i, (entry, token_id) in enumerate(zip(entries, ids, strict=True)):
        row = scored[len(prompt) - 1 + i]
        assert entry.logprob == pytest.approx(row[token_id], abs=LOGPROB_ATOL)
        tops = entry.top_logprobs
        assert len(tops) == 3 and [t.logprob for t in tops] == sorted((t.logprob for t in tops), reverse=True)
        assert tops[0].token == entry.token  # greedy: the sampled token is the most likely
        assert tops[0].logprob == pytest.approx(float(np.max(row)), abs=LOGPROB_ATOL)
        assert bytes(entry.bytes).decode() == entry.token

    streamed = []
    for chunk in client.chat.completions.create(
        model=smollm2_server.model,
        messages=question,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        stream=True,
        temperature=0,
    ):
        for c in chunk.choices:
            streamed += c.logprobs.content if c.logprobs and c.logprobs.content else []
    # The same answer; its prompt now comes from the prefix cache, so values agree to tolerance.
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=LOGPROB_ATOL)


def test_completions_logprobs_and_echo(client, smollm2_server):
    prompt = "The capital of France is"
    answer = client.completions.create(
        model=smollm2_server.model, prompt=prompt, max_tokens=6, logprobs=2, temperature=0
    )
    choice = answer.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(
        len(top) <= 2 and max(top.values()) == pytest.approx(lp_)
        for top, lp_ in zip(lp.top_logprobs, lp.token_logprobs, strict=True)
    )

    echoed = client.completions.create(
        model=smollm2_server.model, prompt=prompt, max_tokens=6, echo=True, temperature=0
    )
    assert echoed.choices[0].text == prompt + choice.text
    stream = client.completions.create(
        model=smollm2_server.model, prompt=prompt, max_tokens=6, echo=True, stream=True, temperature=0
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == prompt + choice.text


def test_n_choices_share_the_prompt_blocks(client, smollm2_server):
    question = _unique_question()
    one = client.chat.completions.create(
        model=smollm2_server.model, messages=question, max_tokens=6, temperature=0
    )
    question = _unique_question()  # cold again: the first choice computes it, the others reuse it
    three = client.chat.completions.create(
        model=smollm2_server.model, messages=question, max_tokens=6, n=3, temperature=0
    )
    assert [c.index for c in three.choices] == [0, 1, 2]
    texts = {c.message.content for c in three.choices}
    assert len(texts) == 1  # greedy: three equal answers
    assert three.usage.completion_tokens % 3 == 0 and three.usage.completion_tokens > 0
    # Only the template's shared system prompt was cached before; a later choice hit the first's
    # blocks of this new prompt as well.
    assert (
        three.usage.prompt_tokens_details.cached_tokens >= one.usage.prompt_tokens_details.cached_tokens + 16
    )

    seen: dict[int, list[str]] = {0: [], 1: []}
    finished = set()
    for chunk in client.chat.completions.create(
        model=smollm2_server.model, messages=question, max_tokens=6, n=2, stream=True, seed=3, temperature=0.8
    ):
        for c in chunk.choices:
            seen[c.index].append(c.delta.content or "")
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1} and all("".join(parts) for parts in seen.values())


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"n": 9}, "n", "less than or equal to 8"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs: true"),
    ],
)
def test_limits_are_refused_naming_the_field(smollm2_server, body, param, words):
    s = smollm2_server
    payload = {"model": s.model, "messages": _unique_question(), "max_tokens": 2, **body}
    response = httpx.post(
        f"{s.base_url}/chat/completions", content=json.dumps(payload), headers=s.headers(), timeout=60
    )
    assert response.status_code == (400 if param == "top_logprobs" and "needs" in words else 422), (
        response.text
    )
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_echo_with_logprobs_is_refused(smollm2_server):
    s = smollm2_server
    payload = {"model": s.model, "prompt": "Hi", "max_tokens": 2, "echo": True, "logprobs": 1}
    response = httpx.post(
        f"{s.base_url}/completions", content=json.dumps(payload), headers=s.headers(), timeout=60
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "echo"
