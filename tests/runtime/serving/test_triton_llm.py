"""Straight to Triton's `llm` model over gRPC (tritonclient), and cancellation through the gateway."""

from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from runtime.server.wire import STATS_REQUEST, GenerateRequest
from tests.runtime.serving.test_openai_api import QUESTION


def request_input(raw: bytes) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([raw], dtype=np.object_))
    return [tensor]


def stream(url: str, wire: GenerateRequest, timeout: float = 120) -> list:
    """All responses of one request, up to the one with a finish_reason (or an error)."""
    return stream_raw(url, wire.to_json(), timeout)


def stream_raw(url: str, raw: bytes, timeout: float = 120) -> list:
    """`stream` for a request tensor given as bytes (it need not be valid)."""
    client = grpcclient.InferenceServerClient(url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer("llm", request_input(raw))
    out = []
    try:
        while True:
            result, error = responses.get(timeout=timeout)
            out.append((result, error))
            if error is not None or result.as_numpy("finish_reason")[0]:
                return out
    finally:
        client.stop_stream()
        client.close()


def stats(url: str) -> dict:
    ((result, error),) = stream(url, STATS_REQUEST)
    assert error is None
    return json.loads(result.as_numpy("info")[0])


def test_stream_infer_streams_one_token_per_response(glm4v_server):
    wire = GenerateRequest(messages=QUESTION, max_tokens=9, temperature=0)
    responses = stream(glm4v_server.grpc_url, wire)
    assert all(error is None for _, error in responses)
    ids = [r.as_numpy("token_ids").tolist() for r, _ in responses]
    assert len(responses) == 9 and all(len(t) == 1 for t in ids)
    final = responses[-1][0]
    assert final.as_numpy("finish_reason")[0] == b"length"
    usage = json.loads(final.as_numpy("info")[0])
    assert usage["completion_tokens"] == 9
    text = b"".join(r.as_numpy("content")[0] for r, _ in responses).decode()
    again = stream(glm4v_server.grpc_url, wire)
    assert b"".join(r.as_numpy("content")[0] for r, _ in again).decode() == text


def test_bad_request_json_is_a_user_error(glm4v_server):
    ((result, error),) = stream(glm4v_server.grpc_url, GenerateRequest(messages=QUESTION, top_p=7.0))
    assert result is None and "invalid_request: top_p must be in (0, 1]" in str(error)


def test_cancelled_stream_frees_its_blocks(glm4v_server):
    """A client that disconnects mid-stream: Triton cancels the request, the scheduler frees it."""
    body = {
        "model": glm4v_server.model,
        "messages": QUESTION,
        "max_tokens": 1500,
        "stream": True,
        "temperature": 0,
    }
    received = threading.Event()

    def consume():
        with httpx.stream(
            "POST", f"{glm4v_server.base_url}/chat/completions", json=body, timeout=60
        ) as response:
            for i, _ in enumerate(response.iter_lines()):
                if i == 10:
                    received.set()
                    return  # leaving the block closes the connection mid-stream

    worker = threading.Thread(target=consume)
    worker.start()
    assert received.wait(60)
    worker.join(10)
    deadline = time.monotonic() + 10
    while (now := stats(glm4v_server.grpc_url))["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now["running"] == 0 and now["waiting"] == 0
    assert now["kv_usage"] == 0.0  # every block is back in the free queue
