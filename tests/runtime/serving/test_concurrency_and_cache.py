"""In-flight batching seen from outside: 64 concurrent streams, and a conversation's prefix reuse."""

from __future__ import annotations

import asyncio

import httpx
from openai import AsyncOpenAI, OpenAI

from tests.runtime.serving.test_openai_api import QUESTION


def test_sixty_four_concurrent_streams_each_equal_the_request_alone(smollm2_server):
    args = {"model": smollm2_server.model, "messages": QUESTION, "max_tokens": 12, "temperature": 0}
    client = OpenAI(base_url=smollm2_server.base_url, api_key=smollm2_server.api_key, max_retries=0)
    alone = client.chat.completions.create(**args).choices[0].message.content

    async def one(aclient: AsyncOpenAI) -> str:
        pieces = []
        async for chunk in await aclient.chat.completions.create(stream=True, **args):
            pieces += [c.delta.content or "" for c in chunk.choices]
        return "".join(pieces)

    async def all_at_once() -> list[str]:
        aclient = AsyncOpenAI(base_url=smollm2_server.base_url, api_key=smollm2_server.api_key, max_retries=0)
        try:
            return await asyncio.gather(*(one(aclient) for _ in range(64)))
        finally:
            await aclient.close()

    texts = asyncio.run(all_at_once())
    assert texts == [alone] * 64
    metrics = httpx.get(f"{smollm2_server.root}/metrics").text
    assert "autoglm_running_sequences 0.0" in metrics and "autoglm_kv_cache_usage_ratio 0.0" in metrics


def test_three_turn_conversation_hits_the_prefix_cache(smollm2_server):
    client = OpenAI(base_url=smollm2_server.base_url, api_key=smollm2_server.api_key, max_retries=0)
    messages = [{"role": "system", "content": "You are a concise phone assistant. " * 6}]
    cached = []
    for question in ("Open the Wi-Fi settings.", "Now turn on Bluetooth.", "And set an alarm for 7 am."):
        messages.append({"role": "user", "content": question})
        response = client.chat.completions.create(
            model=smollm2_server.model, messages=messages, max_tokens=16, temperature=0
        )
        messages.append({"role": "assistant", "content": response.choices[0].message.content})
        cached.append((response.usage.prompt_tokens_details.cached_tokens, response.usage.prompt_tokens))
    (_, p1), (c2, p2), (c3, p3) = cached
    assert c2 >= 16 * (p1 // 16) - 16 and c3 >= 16 * (p2 // 16) - 16  # earlier turns' blocks reused
    assert c3 / p3 > 0.5
