"""Dynamo's OpenAI frontend plus 2 of our workers on loopback (file discovery, TCP, ZMQ):
the same greedy tokens as our own gateway, KV-aware routing of conversations onto the worker
holding their blocks, and a worker killed mid-load."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import openai
import pytest

from runtime.dynamo.compat import dynamo_missing_reason
from runtime.dynamo.launcher import DynamoCluster, DynamoServeConfig
from runtime.server.background import start_background_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(dynamo_missing_reason() is not None, reason=str(dynamo_missing_reason())),
]

SYSTEM = "You help people use the apps on their phones, step by step, with care. " * 4
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOGGED = re.compile(r"request ([0-9a-f-]{36})-\d+: (\d+) prompt tokens \((\d+) from the prefix cache\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(glm4v_tiny_engines, tmp_path_factory):
    config = DynamoServeConfig(
        glm4v_tiny_engines,
        workers=2,
        port=free_port(),
        threads=1,
        state_dir=tmp_path_factory.mktemp("dynamo"),
    )
    cluster = DynamoCluster(config)
    cluster.start(say=lambda line: None)
    yield cluster
    codes = cluster.stop()
    assert all(code is not None for code in codes), "a process outlived stop()"


@pytest.fixture(scope="module")
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def served_by(cluster: DynamoCluster) -> dict[str, tuple[int, int, int]]:
    """Request id -> (worker index, prompt tokens, tokens from its prefix cache), from the logs."""
    found = {}
    for i in range(cluster.config.workers):
        text = ANSI.sub("", (cluster.log_dir / f"worker-{i}.log").read_text(errors="replace"))
        for rid, prompt, cached in LOGGED.findall(text):
            found[rid] = (i, int(prompt), int(cached))
    return found


def request_id(response_id: str) -> str:
    return response_id.split("-", 1)[1]  # chatcmpl-<uuid> / cmpl-<uuid>


def test_models_lists_the_engines_model_name(client):
    assert [m.id for m in client.models.list().data] == ["glm4v-tiny"]


def test_same_greedy_tokens_as_our_gateway(client, glm4v_tiny_engines):
    gateway = start_background_server(glm4v_tiny_engines, extra_args=("--threads", "1"))
    try:
        ours = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
        for prompt in ("The capital of France is", "Open the settings app and"):
            kwargs = dict(model="glm4v-tiny", prompt=prompt, max_tokens=16, temperature=0)
            want, got = ours.completions.create(**kwargs), client.completions.create(**kwargs)
            assert got.usage.prompt_tokens == want.usage.prompt_tokens
            assert got.choices[0].text == want.choices[0].text, prompt
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Open settings."}]
        kwargs = dict(model="glm4v-tiny", messages=messages, max_tokens=16, temperature=0)
        want, got = ours.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
        assert got.usage.prompt_tokens == want.usage.prompt_tokens
        assert got.usage.completion_tokens == want.usage.completion_tokens
        # Random tiny weights emit stray byte tokens: both detokenizers write U+FFFD for them.
        assert got.choices[0].message.content == want.choices[0].message.content
    finally:
        code, left = gateway.stop()
        assert code == 0 and not left


def instance_ids(cluster: DynamoCluster) -> list[int]:
    """Each worker's Dynamo instance id, from its ready line."""
    ids = []
    for i in range(cluster.config.workers):
        text = ANSI.sub("", (cluster.log_dir / f"worker-{i}.log").read_text(errors="replace"))
        ids.append(int(re.search(r"worker (\d+): \S+ \(\w+\) ready", text).group(1)))
    return ids


def test_conversation_turns_follow_their_blocks(client, cluster):
    """Three conversations, turn by turn. Each first turn is pinned to a worker (0, 1, 0) with
    Dynamo's `nvext.backend_instance_id`; the KV router must send turns 2 and 3 to that worker,
    where they hit its prefix cache."""
    pinned = instance_ids(cluster)
    conversations = [[{"role": "system", "content": f"Conversation {c}. {SYSTEM}"}] for c in range(3)]
    ids: list[list[str]] = [[] for _ in conversations]
    for turn in range(3):
        for c, messages in enumerate(conversations):
            messages.append({"role": "user", "content": f"Step {turn}: what is on the screen now?"})
            extra = {"nvext": {"backend_instance_id": pinned[c % 2]}} if turn == 0 else None
            response = client.chat.completions.create(
                model="glm4v-tiny", messages=messages, max_tokens=12, temperature=0, extra_body=extra
            )
            messages.append({"role": "assistant", "content": response.choices[0].message.content})
            ids[c].append(request_id(response.id))
            if turn:
                assert response.usage.prompt_tokens_details.cached_tokens > 0
    time.sleep(0.5)  # the last log lines
    served = served_by(cluster)
    for c, turns in enumerate(ids):
        workers = [served[rid][0] for rid in turns]
        cached = [served[rid][2] for rid in turns]
        print(f"conversation {c}: workers {workers}, cached prompt tokens {cached}")
        assert workers == [c % 2] * 3, f"conversation {c} moved between workers: {workers}"
        assert all(n > 0 for n in cached[1:]), cached


def test_a_client_that_leaves_cancels_its_request(client, cluster):
    """Closing the stream makes Dynamo cancel the request: the worker aborts it in its engine
    (freeing its slot and blocks) instead of generating all 400 tokens."""
    stream = client.completions.create(
        model="glm4v-tiny", prompt="Count slowly", max_tokens=400, temperature=0, stream=True
    )
    rid = None
    for i, chunk in enumerate(stream):
        rid = request_id(chunk.id)
        if i == 2:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        logs = "".join(
            ANSI.sub("", (cluster.log_dir / f"worker-{i}.log").read_text(errors="replace"))
            for i in range(cluster.config.workers)
        )
        if f"request {rid} cancelled" in logs:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no worker logged the cancellation of {rid}")
    assert rid not in served_by(cluster), "the cancelled request ran to its end"


def test_killing_a_worker_mid_load(client, cluster):
    """Six long requests, three pinned to each worker; worker 1 is killed while they run. Nothing
    hangs, worker 0's requests finish, and requests sent afterwards are served by the survivor
    once the frontend has dropped the dead worker (until then it answers 503, which a client may
    retry)."""
    pinned = instance_ids(cluster)
    outcomes: dict[int, str] = {}
    started = [threading.Event() for _ in range(6)]

    def stream(i: int) -> None:
        try:
            chunks = client.completions.create(
                model="glm4v-tiny", prompt=f"Request {i}: list the apps", max_tokens=1000,
                temperature=0, stream=True,
                extra_body={"ignore_eos": True, "nvext": {"backend_instance_id": pinned[i % 2]}},
            )  # fmt: skip
            finish, pieces = None, 0
            for chunk in chunks:
                started[i].set()
                pieces += 1
                finish = chunk.choices[0].finish_reason if chunk.choices else finish
            outcomes[i] = f"{finish}:{pieces}"
        except openai.APIError as error:
            outcomes[i] = f"error: {type(error).__name__}"
        finally:
            started[i].set()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for event in started:
        assert event.wait(60)
    victim = cluster.workers[1]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a request hung after its worker died"
    print("outcomes:", outcomes)
    assert set(outcomes) == set(range(6))
    # worker 0's requests run to their 1000 tokens; the dead worker's end either way: an API
    # error, or a stream the frontend closes (measured both ways from one run to the next)
    assert all(outcomes[i].startswith("length:") for i in (0, 2, 4)), outcomes

    deadline = time.monotonic() + 60
    served = 0
    while served < 4:
        try:
            response = client.completions.create(
                model="glm4v-tiny", prompt=f"After the crash {served}", max_tokens=8, temperature=0
            )
        except openai.InternalServerError as error:  # the frontend still lists the dead worker
            assert error.status_code == 503 and time.monotonic() < deadline, error
            time.sleep(1)
            continue
        assert response.choices[0].finish_reason in ("length", "stop")
        assert served_by(cluster)[request_id(response.id)][0] == 0
        served += 1
