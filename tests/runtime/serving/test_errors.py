"""Every bad request gets an OpenAI-style error body with the right status, never a 500, and the
server keeps answering afterwards."""

from __future__ import annotations

import base64

import httpx
import pytest
from fastapi.testclient import TestClient

from runtime.gateway.app import create_app
from runtime.gateway.config import GatewayConfig
from tests.runtime.serving.test_openai_api import QUESTION

PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fe"
        "a7d6a4b80000000049454e44ae426082"
    )
).decode()


def post(served, path: str, body=None, headers=None, content=None) -> httpx.Response:
    headers = {**served.headers(), **(headers or {})}
    return httpx.post(f"{served.base_url}{path}", json=body, content=content, headers=headers, timeout=60)


def assert_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error["message"]


def chat(served, **extra) -> dict:
    return {"model": served.model, "messages": QUESTION, "max_tokens": 2, **extra}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"messages": QUESTION}, 422, "model"),
        ({"model": "x"}, 422, "messages"),
        ("TEMPERATURE", 422, "temperature"),
        ("N", 422, "less than or equal to 8"),
        ("UNKNOWN_MODEL", 404, "does not exist"),
        ("IMAGE", 400, "has no vision encoder"),
        ("BAD_DATA_URL", 400, "base64"),
        ("LOCAL_FILE", 400, "--allow-local-media"),
        ("TOO_LONG", 400, "tokens but the engines were built for at most"),
    ],
)
def test_bad_chat_requests(smollm2_server, body, status, words):
    s = smollm2_server
    bodies = {
        "TEMPERATURE": chat(s, temperature=5),
        "N": chat(s, n=9),
        "UNKNOWN_MODEL": chat(s, model="gpt-4"),
        "IMAGE": chat(
            s,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
                    ],
                }
            ],
        ),
        "BAD_DATA_URL": chat(
            s,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}],
                }
            ],
        ),
        "LOCAL_FILE": chat(
            s,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/hostname"}}]}
            ],
        ),
        "TOO_LONG": chat(s, messages=[{"role": "user", "content": "hello " * 3000}]),
    }
    assert_error(post(s, "/chat/completions", bodies[body] if isinstance(body, str) else body), status, words)


def test_transport_level_errors(smollm2_server):
    s = smollm2_server
    assert_error(
        post(s, "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "not valid JSON",
    )
    assert_error(
        post(s, "/chat/completions", chat(s), headers={"Authorization": "Bearer wrong"}), 401, "API key"
    )
    assert_error(httpx.get(f"{s.base_url}/models"), 401, "API key")
    assert_error(post(s, "/nope", {}), 404, "no route")
    assert_error(post(s, "/chat/completions", content=b"x" * (33 * 2**20)), 413, "at most")
    assert_error(post(s, "/completions", {"model": s.model, "prompt": ["a", "b"]}), 400, "one string")
    ok = post(s, "/chat/completions", chat(s, temperature=0))  # still serving
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_triton_down_is_503():
    """A gateway whose Triton is unreachable: /health and generation answer 503."""
    app = create_app(GatewayConfig(triton_url="127.0.0.1:9", model_id="m"))
    with TestClient(app) as client:
        assert_error(client.get("/health"), 503, "not ready")
        body = {"model": "m", "messages": QUESTION}
        assert_error(client.post("/v1/chat/completions", json=body), 503, "could not answer")
        assert client.get("/metrics").status_code == 200
