"""A client that leaves is cancelled within a second, whatever its request is doing: queued,
prefilling, decoding; streamed or not. Its slot and KV blocks come back (free + used = total),
and the scheduler's and the gateway's gauges return to idle."""

from __future__ import annotations

import random
import time

import pytest
from openai import OpenAI

from tests.runtime.serving.clients import RawRequest, assert_idle, assert_pool_consistent, idle, wait_for
from tests.runtime.serving.test_openai_api import QUESTION

CANCEL_WITHIN = 1.0  # seconds from the socket closing to the request being gone


def gone(server, left: float, done, what: str) -> dict:
    """Wait for `done(snapshot)`; assert it came within CANCEL_WITHIN of `left` (and report it)."""
    snapshot, _ = wait_for(server, done)
    took = time.perf_counter() - left
    print(f"\n{what}: gone {took * 1e3:.0f} ms after its client left")
    assert took < CANCEL_WITHIN, f"{what}: still there {took:.2f} s after its client left"
    assert_pool_consistent(snapshot)
    return snapshot


def long_chat(server, stream: bool, content: str = "Tell me a long story.", max_tokens: int = 1800) -> dict:
    return {
        "model": server.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_leaving_while_decoding(glm4v_server, stream):
    request = RawRequest(glm4v_server, "/chat/completions", long_chat(glm4v_server, stream))
    if stream:
        request.read_events(5)
    wait_for(glm4v_server, lambda s: s["running"] == 1)
    time.sleep(0.3)  # well into decoding
    gone(glm4v_server, request.leave(), idle, f"decoding ({'streamed' if stream else 'whole'})")
    assert_idle(glm4v_server)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_leaving_while_queued(glm4v_server, stream):
    """Eight long streams hold every running slot; a ninth request waits, and its client leaves."""
    running = [RawRequest(glm4v_server, "/chat/completions", long_chat(glm4v_server, True)) for _ in range(8)]
    for request in running:
        request.read_events(2)
        request.drain_in_background()
    queued = RawRequest(glm4v_server, "/chat/completions", long_chat(glm4v_server, stream))
    before, _ = wait_for(glm4v_server, lambda s: s["waiting"] == 1)
    assert before["running"] == 8
    what = f"queued ({'streamed' if stream else 'whole'})"
    after = gone(glm4v_server, queued.leave(), lambda s: s["waiting"] == 0 and s["live"] == 8, what)
    assert after["running"] == 8  # the others go on
    gone(glm4v_server, max(request.leave() for request in running), idle, "8 decoding streams")
    assert_idle(glm4v_server)


def _prompt_that_prefills_for(server, seconds: float) -> int:
    """Words of a prompt whose prefill takes about `seconds` on this machine (timed, not assumed)."""
    client = OpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)
    words = 40
    for _ in range(5):
        start = time.perf_counter()
        text = f"{random.random()} " + " ".join(f"w{i}" for i in range(words))  # no cached prefix
        client.completions.create(model=server.model, prompt=text, max_tokens=1)
        took = time.perf_counter() - start
        if 0.7 * seconds <= took <= 1.3 * seconds:
            break
        words = max(10, min(600, round(words * seconds / took)))
    return words


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_leaving_while_prefilling(smollm2_server, stream):
    """The prompt is prefilled in one engine call; a client leaving during it is cancelled when
    that call returns, before any token is decoded. The prompt is sized so its prefill takes
    about 0.4 s here, leaving the request mid-prefill."""
    words = _prompt_that_prefills_for(smollm2_server, 0.4)
    content = f"{random.random()} " + " ".join(f"w{i}" for i in range(words))
    request = RawRequest(smollm2_server, "/chat/completions", long_chat(smollm2_server, stream, content))
    wait_for(smollm2_server, lambda s: s["live"] == 1 and s["running"] == 0)  # admitted, in its prefill
    time.sleep(0.1)
    gone(smollm2_server, request.leave(), idle, f"prefilling ({'streamed' if stream else 'whole'})")
    assert_idle(smollm2_server)


def test_a_hundred_clients_leaving_mid_stream(glm4v_server):
    """100 streams, 10 at a time, each leaving after 1-30 tokens; the pool is whole afterwards and
    the server answers as before."""
    client = OpenAI(base_url=glm4v_server.base_url, api_key="EMPTY", max_retries=0)
    args = {"model": glm4v_server.model, "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    before = client.chat.completions.create(**args).choices[0].message.content
    rng = random.Random(0)
    for _ in range(10):
        wave = [
            RawRequest(glm4v_server, "/chat/completions", long_chat(glm4v_server, True)) for _ in range(10)
        ]
        for request in wave:
            request.read_events(rng.randint(1, 30))
            request.leave()
    wait_for(glm4v_server, idle, timeout=CANCEL_WITHIN)
    assert_idle(glm4v_server)
    assert client.chat.completions.create(**args).choices[0].message.content == before
