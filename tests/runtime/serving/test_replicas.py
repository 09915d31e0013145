"""`serve --replicas 2`: two llm models (`llm`, `llm_1`) behind one gateway, on the CPU.

The router's rules are checked directly (no server); the rest through one real server: both
replicas serve, a conversation's later turns hit the prefix cache of the replica that served its
first, greedy answers equal the engine alone, and SIGTERM leaves no process behind.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest
from openai import AsyncOpenAI, OpenAI

from runtime.gateway.replicas import ReplicaRouter, affinity_key, combine_stats, replica_names
from runtime.gateway.triton_llm import TritonLLM
from runtime.server.background import start_background_server
from runtime.server.launcher import instance_groups
from runtime.server.triton_process import replica_repository
from runtime.server.wire import GenerateRequest
from tests.runtime.serving.clients import IDLE_GAUGES, RawRequest
from tests.runtime.serving.conftest import stop
from tests.runtime.serving.test_openai_api import reference, split

REPLICAS = ("llm", "llm_1")
NO_THINKING = {"enable_thinking": False}


def chat(system: str, *users: str) -> GenerateRequest:
    messages = [{"role": "system", "content": system}]
    for user in users:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}]
    return GenerateRequest(messages=messages[:-1])


# The router, without a server.


def test_a_conversation_keeps_its_key_turn_after_turn_and_others_differ():
    first, third = chat("Be brief.", "hi"), chat("Be brief.", "hi", "and then?", "why?")
    assert affinity_key(first) == affinity_key(third)
    assert affinity_key(first) != affinity_key(chat("Be brief.", "hello"))
    assert affinity_key(first) != affinity_key(chat("Be long.", "hi"))
    image_turn = GenerateRequest(messages=[{"role": "user", "content": [{"type": "image"}]}])
    assert affinity_key(image_turn, [b"cat"]) != affinity_key(image_turn, [b"dog"])
    long = "x" * 300
    assert affinity_key(GenerateRequest(prompt=long)) == affinity_key(GenerateRequest(prompt=long + "more"))


def test_new_conversations_spread_and_known_ones_return_to_their_replica():
    router = ReplicaRouter(REPLICAS, spill=3)
    keys = [bytes([i]) for i in range(4)]
    placed = [router.acquire(key) for key in keys]  # all in flight at once
    assert placed == ["llm", "llm_1", "llm", "llm_1"]
    for name in placed:
        router.release(name)
    assert [router.acquire(key) for key in reversed(keys)] == placed[::-1]  # turn 2: same replicas
    assert router.in_flight == {"llm": 2, "llm_1": 2}
    router.acquire(keys[0]), router.acquire(keys[0]), router.acquire(keys[0])  # llm: 5 in flight
    assert router.acquire(keys[0]) == "llm_1"  # 3 busier than llm_1: spilled, still pinned to llm
    assert router.conversations == {"llm": 2, "llm_1": 2}


def test_the_router_forgets_the_least_recently_used_conversations():
    router = ReplicaRouter(REPLICAS, remember=2)
    for key in (b"a", b"b", b"a", b"c"):  # b is the oldest when c arrives
        router.release(router.acquire(key))
    assert router.conversations == {"llm": 2, "llm_1": 0}  # a and c on llm; b (on llm_1) forgotten


def test_replica_stats_add_up():
    combined = combine_stats(
        {
            "llm": {"running": 1, "kv_usage": 0.25, "precision": "fp16"},
            "llm_1": {"running": 2, "kv_usage": 0.75},
        }
    )
    assert combined["running"] == 3 and combined["kv_usage"] == 0.5 and combined["precision"] == "fp16"
    assert set(combined["replicas"]) == set(REPLICAS)


def test_replica_repository_and_instance_groups(tmp_path):
    repo = tmp_path / "repo"
    for model in ("llm", "vision_encoder"):
        (repo / model).mkdir(parents=True)
        (repo / model / "config.pbtxt").write_text("")
    out = replica_repository(repo, {"llm_1": "llm"}, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["llm", "llm_1", "vision_encoder"]
    assert (out / "llm_1").resolve() == (repo / "llm").resolve()
    models = dict.fromkeys([*replica_names("llm", 3), "vision_encoder"])
    cpu = instance_groups(models, 3, gpus=0)
    assert cpu["llm_2"] == [{"kind": "KIND_CPU", "count": 1}]
    assert cpu["vision_encoder"] == [{"kind": "KIND_CPU", "count": 3}]
    gpu = instance_groups(models, 3, gpus=2)  # the GPU path: written, not run here
    assert [gpu[m][0]["gpus"] for m in replica_names("llm", 3)] == [[0], [1], [0]]
    assert gpu["vision_encoder"] == [{"kind": "KIND_GPU", "count": 1, "gpus": [0, 1]}]
    assert instance_groups(models, 1, gpus=0) == {}


# One real server with two replicas.


@pytest.fixture(scope="module")
def replica_server(glm4v_tiny_engines):
    server = start_background_server(glm4v_tiny_engines, extra_args=("--threads", "1", "--replicas", "2"))
    yield server
    if server.process.poll() is None:
        stop(server)


def replica_stats(server) -> dict[str, dict]:
    async def ask() -> dict:
        llm = TritonLLM(server.grpc_url)  # the gateway's client: finds the replicas through Triton
        try:
            return (await llm.stats())["replicas"]
        finally:
            await llm.close()

    return asyncio.run(ask())


def requests_received(server) -> dict[str, int]:
    """Requests each replica has had (generations, cancel and stats ops), as Triton counts them
    (its JSON leaves the count out while it is 0: this test may run first, alone)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        return {
            name: int(
                client.get_inference_statistics(name, as_json=True)["model_stats"][0].get(
                    "inference_count", 0
                )
            )
            for name in REPLICAS
        }
    finally:
        client.close()


def test_both_replicas_load_and_health_needs_them(replica_server):
    ready_lines = "\n".join(replica_server.lines)
    assert "llm_1" in ready_lines
    assert httpx.get(f"{replica_server.root}/health").status_code == 200
    assert set(replica_stats(replica_server)) == set(REPLICAS)


def test_conversations_spread_and_later_turns_hit_their_replicas_cache(replica_server):
    async def conversation(client: AsyncOpenAI, name: str) -> list[tuple[int, int]]:
        # distinct from the first token on, so no other conversation shares a block with it
        messages = [{"role": "system", "content": f"{name} is a concise phone assistant. " * 6}]
        usage = []
        for question in ("Open the settings.", "Now turn on Wi-Fi.", "And Bluetooth?"):
            messages.append({"role": "user", "content": question})
            response = await client.chat.completions.create(
                model=replica_server.model,
                messages=messages,
                max_tokens=8,
                temperature=0,
                extra_body=NO_THINKING,
            )
            messages.append({"role": "assistant", "content": response.choices[0].message.content})
            usage.append((response.usage.prompt_tokens, response.usage.prompt_tokens_details.cached_tokens))
        return usage

    async def four() -> list[list[tuple[int, int]]]:
        client = AsyncOpenAI(base_url=replica_server.base_url, api_key="EMPTY", max_retries=0)
        try:
            return await asyncio.gather(*(conversation(client, n) for n in ("Ada", "Bo", "Cy", "Di")))
        finally:
            await client.close()

    before = replica_stats(replica_server)
    turns = asyncio.run(four())
    after = replica_stats(replica_server)
    for (p1, _), (p2, c2), (_, c3) in turns:
        assert c2 >= 16 * (p1 // 16) - 16 and c3 >= 16 * (p2 // 16) - 16  # earlier turns' blocks reused
    served = {name: after[name]["prefix_queries"] - before[name]["prefix_queries"] for name in REPLICAS}
    hits = {name: after[name]["prefix_hits"] - before[name]["prefix_hits"] for name in REPLICAS}
    assert sum(served.values()) == sum(p for t in turns for p, _ in t)
    assert all(served.values()) and all(hits.values()), (served, hits)  # both replicas served
    assert sum(hits.values()) == sum(c for t in turns for _, c in t)


def test_greedy_answers_equal_the_engine_alone_on_each_replica(replica_server):
    client = OpenAI(base_url=replica_server.base_url, api_key="EMPTY", max_retries=0)
    before = replica_stats(replica_server)
    for question in ("What is the capital of France?", "Name a colour.", "Count to three.", "Say hi."):
        messages = [{"role": "user", "content": question}]
        generator, prompt, ids, reason = reference(
            replica_server.engines, messages, 12, add_generation_prompt=True, **NO_THINKING
        )
        content, reasoning = split(generator, prompt, ids)
        response = client.chat.completions.create(
            model=replica_server.model,
            messages=messages,
            max_tokens=12,
            temperature=0,
            extra_body=NO_THINKING,
        )
        assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (len(prompt), len(ids))
        # random weights emit stray UTF-8 fragments: the stream writes U+FFFD where Hugging Face does
        assert response.choices[0].message.content == content
        assert response.choices[0].message.reasoning_content == (reasoning or None)
        assert response.choices[0].finish_reason == reason
    after = replica_stats(replica_server)
    assert all(after[n]["prefix_queries"] > before[n]["prefix_queries"] for n in REPLICAS)


def test_a_client_leaving_is_cancelled_on_its_own_replica(replica_server):
    def long_story(who: str) -> dict:
        content = f"{who} asks: tell me a long story."
        return {
            "model": replica_server.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 1800,
            "temperature": 0,
            "stream": True,
        }

    before = requests_received(replica_server)
    requests = [RawRequest(replica_server, "/chat/completions", long_story(who)) for who in ("Eve", "Fay")]
    for request in requests:
        request.read_events(3)
    assert [s["running"] for s in replica_stats(replica_server).values()] == [1, 1]
    for request in requests:
        request.leave()
    deadline = time.monotonic() + 1  # a cancel sent to the wrong replica leaves one running
    while True:
        now = replica_stats(replica_server)
        if not any(s["live"] or s["running"] or s["kv_usage"] for s in now.values()):
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.05)
    received = requests_received(replica_server)
    # each replica had one generation, its cancel op and the same stats ops (a long story takes
    # about 1.5 s here, so timing alone would not catch a cancel sent to the other replica)
    assert received["llm"] - before["llm"] == received["llm_1"] - before["llm_1"], (before, received)
    metrics = httpx.get(f"{replica_server.root}/metrics").text
    assert all(gauge in metrics for gauge in IDLE_GAUGES), metrics
    for replica in ("llm", "llm_1"):  # each copy's own gauges, idle too
        assert f'autoglm_replica_running_sequences{{replica="{replica}"}} 0.0' in metrics, metrics
        assert f'autoglm_replica_kv_cache_usage_ratio{{replica="{replica}"}} 0.0' in metrics, metrics


def test_sigterm_stops_the_gateway_triton_and_every_stub(replica_server):
    stubs = [
        p
        for p in psutil.Process(replica_server.process.pid).children(recursive=True)
        if any("stub" in part for part in p.cmdline())
    ]
    assert len(stubs) >= 6  # llm, llm_1, and two instances of each encoder
    stop(replica_server)
