"""Serving benchmark: output tokens/s at concurrency 8 vs 1, and prefix reuse over a conversation.

    .venv/bin/python scripts/bench_concurrency.py                      # starts `autoglm-trt serve` itself
    .venv/bin/python scripts/bench_concurrency.py --url http://127.0.0.1:8000/v1 --model smollm2-135m

Both concurrency levels run the same requests in the same run (greedy, same max_tokens), so the
ratio compares like with like; they are levels of `autoglm-trt bench serve` (builder/bench/serve.py),
which measures the whole concurrency curve. The conversation part reports TTFT per turn, the prefix-cache hit
rate (from /metrics) and TTFT of turn 3 with a cold cache (a nonce in the system prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import uuid
from pathlib import Path

import httpx
from openai import AsyncOpenAI

from builder.bench.serve import ServeBenchConfig, load_prompts, messages_for, run_level, timed_request
from runtime.server.background import start_background_server

SYSTEM = "You are AutoGLM, a helpful assistant that operates a phone for the user. " * 8


async def completion(client: AsyncOpenAI, model: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed chat completion (builder/bench/serve.py): its text, usage and TTFT."""
    timing = await timed_request(client, model, messages, max_tokens)
    return {"text": timing.text, "usage": timing.usage, "ttft": timing.ttft_s}


async def throughput(
    client: AsyncOpenAI, model: str, concurrency: int, requests: int, max_tokens: int
) -> dict:
    """One level of `autoglm-trt bench serve` over the shipped prompt set (user turns only)."""
    _, questions = load_prompts(None)
    cfg = ServeBenchConfig(url="", requests=requests, max_tokens=max_tokens)
    level = await run_level(
        client, cfg, model, lambda i: messages_for(None, questions[i % len(questions)], []), concurrency
    )
    if level["errors"]:
        raise SystemExit(f"{level['errors']} requests failed, e.g. {level['error_samples'][0]}")
    return {
        "concurrency": concurrency,
        "requests": level["requests"],
        "tokens": level["output_tokens"],
        "seconds": level["wall_s"],
        "tokens_per_s": level["output_tokens_per_s"],
    }


def prefix_counters(root: str, headers: dict) -> tuple[float, float]:
    text = httpx.get(f"{root}/metrics", headers=headers).text
    found = {
        m: float(re.search(rf"^{m} (\S+)$", text, re.M).group(1))
        for m in ("autoglm_prefix_cache_queried_tokens", "autoglm_prefix_cache_hit_tokens")
    }
    return found["autoglm_prefix_cache_queried_tokens"], found["autoglm_prefix_cache_hit_tokens"]


async def conversation(client: AsyncOpenAI, model: str, root: str, headers: dict, max_tokens: int) -> dict:
    """Three turns as a user sends them; then turn 3 again with a cold cache (a nonce up front)."""
    turns = ["Open the Wi-Fi settings.", "Now turn on Bluetooth.", "And set an alarm for 7 am."]
    messages, ttfts, prompts, cached = [{"role": "system", "content": SYSTEM}], [], [], []
    queries0, hits0 = prefix_counters(root, headers)
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        answer = await completion(client, model, messages, max_tokens)
        ttfts.append(answer["ttft"])
        prompts.append(answer["usage"].prompt_tokens)
        cached.append(answer["usage"].prompt_tokens_details.cached_tokens)
        messages.append({"role": "assistant", "content": answer["text"]})
    queries1, hits1 = prefix_counters(root, headers)
    cold = [{"role": "system", "content": f"[{uuid.uuid4().hex}] {SYSTEM}"}, *messages[1:-1]]
    cold_ttft = (await completion(client, model, cold, 1))["ttft"]
    return {
        "prompt_tokens": prompts,
        "cached_tokens": cached,
        "ttft_s": ttfts,
        "turn3_cold_ttft_s": cold_ttft,
        "prefix_hit_rate": (hits1 - hits0) / max(queries1 - queries0, 1),
    }


async def run(args) -> dict:
    client = AsyncOpenAI(base_url=args.url, api_key=args.api_key or "EMPTY", max_retries=0)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        await throughput(client, args.model, 1, 1, 8)  # warm-up
        one = await throughput(client, args.model, 1, args.requests, args.max_tokens)
        eight = await throughput(client, args.model, 8, args.requests, args.max_tokens)
        chat = await conversation(client, args.model, args.url.removesuffix("/v1"), headers, 32)
    finally:
        await client.close()
    return {
        "c1": one,
        "c8": eight,
        "ratio_c8_c1": eight["tokens_per_s"] / one["tokens_per_s"],
        "conversation": chat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's /v1 URL; default: start one")
    parser.add_argument("--engines", type=Path, default=Path("engines/smollm2-135m"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--api-key")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    served = None
    if args.url is None:
        served = start_background_server(args.engines, api_key=args.api_key)
        args.url, args.model = served.base_url, served.model
    try:
        result = asyncio.run(run(args))
    finally:
        if served:
            served.stop()
    c1, c8, conv = result["c1"], result["c8"], result["conversation"]
    print(f"concurrency 1: {c1['tokens']} tokens in {c1['seconds']:.1f} s = {c1['tokens_per_s']:.1f} tok/s")
    print(f"concurrency 8: {c8['tokens']} tokens in {c8['seconds']:.1f} s = {c8['tokens_per_s']:.1f} tok/s")
    print(f"ratio c8/c1: {result['ratio_c8_c1']:.2f}x")
    t1, t2, t3 = conv["ttft_s"]
    print(
        f"conversation prompt tokens {conv['prompt_tokens']}, cached {conv['cached_tokens']}; "
        f"prefix-cache hit rate {conv['prefix_hit_rate']:.0%}"
    )
    print(
        f"TTFT turn 1 {t1 * 1e3:.0f} ms, turn 2 {t2 * 1e3:.0f} ms, turn 3 {t3 * 1e3:.0f} ms "
        f"(turn 3 cold cache {conv['turn3_cold_ttft_s'] * 1e3:.0f} ms; warm/cold {t3 / conv['turn3_cold_ttft_s']:.2f})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
