"""Hostile input through the real gateway and tritonserver: deep nesting, broken Unicode, huge
headers, fields the server does not implement. Each gets a 4xx with an OpenAI error body that
names the problem (or a normal answer), never a 500, never a path, traceback or library message,
and always a request id; the server keeps answering afterwards."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from fastapi.testclient import TestClient

from runtime.gateway.app import create_app
from runtime.gateway.config import GatewayConfig
from runtime.manifest import Manifest
from runtime.server.prompting import PromptLimits, longest_token_chars
from tests.runtime.serving.test_openai_api import QUESTION
from tests.runtime.serving.test_triton_llm import stream_raw

LEAKS = re.compile(r"Traceback|File \"|\.py\b|/work/|site-packages|TypeError|RecursionError|At:|grpc", re.I)


def send(served, path: str, raw: bytes, headers=None) -> httpx.Response:
    headers = {**served.headers(), "content-type": "application/json", **(headers or {})}
    return httpx.post(f"{served.base_url}{path}", content=raw, headers=headers, timeout=120)


def chat_json(served, content_json: str = '"hi"', extra: str = "") -> bytes:
    """A chat body with the user content given as raw JSON text (escapes kept as written)."""
    messages = f'[{{"role": "user", "content": {content_json}}}]'
    return f'{{"model": "{served.model}", "messages": {messages}, "max_tokens": 2{extra}}}'.encode()


def assert_refused(response: httpx.Response, status: int, words: str, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert re.fullmatch(r"req-[0-9a-f]{24}", response.headers["x-request-id"])
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"], error["message"]
    assert not LEAKS.search(error["message"]), error["message"]
    if param is not None:
        assert error["param"] == param


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a": ' * depth + leaf + "}" * depth


@pytest.mark.parametrize(
    ("case", "words", "param"),
    [
        ("deep body", "nests too deeply", None),
        ("deep kwargs", "nests too deeply", None),
        ("kwargs under the parser limit", "nests deeper than 16 levels", "chat_template_kwargs"),
        ("kwargs that set the template", "chat_template", "chat_template_kwargs"),
        ("lone high surrogate", "lone UTF-16 surrogate", None),
        ("lone low surrogate", "lone UTF-16 surrogate", None),
        ("surrogate in a stop string", "lone UTF-16 surrogate", None),
        ("surrogate in a kwargs key", "lone UTF-16 surrogate", None),
        ("invalid UTF-8", "not valid UTF-8", None),
        ("array body", "must be a JSON object", None),
    ],
)
def test_malformed_bodies_are_400(smollm2_server, case, words, param):
    s = smollm2_server
    raw = {
        "deep body": chat_json(s, extra=f', "x": {"[" * 5000}{"]" * 5000}'),
        "deep kwargs": chat_json(s, extra=f', "chat_template_kwargs": {nested(5000)}'),
        "kwargs under the parser limit": chat_json(s, extra=f', "chat_template_kwargs": {nested(40)}'),
        "kwargs that set the template": chat_json(
            s, extra=', "chat_template_kwargs": {"chat_template": "{{ 1 }}"}'
        ),
        "lone high surrogate": chat_json(s, r'"a\ud800b"'),
        "lone low surrogate": chat_json(s, r'"\udfff"'),
        "surrogate in a stop string": chat_json(s, extra=r', "stop": ["x\udbff"]'),
        "surrogate in a kwargs key": chat_json(s, extra=r', "chat_template_kwargs": {"\ud800": 1}'),
        "invalid UTF-8": chat_json(s, '"caf\xe9"').replace(b"\xc3\xa9", b"\xe9"),
        "array body": b"[1, 2]",
    }[case]
    assert_refused(send(s, "/chat/completions", raw), 400, words, param)


def test_surrogates_in_completions_and_in_the_wire_are_refused(smollm2_server):
    s = smollm2_server
    raw = f'{{"model": "{s.model}", "prompt": "x\\ud800", "max_tokens": 2}}'.encode()
    assert_refused(send(s, "/completions", raw), 400, "lone UTF-16 surrogate")
    # Straight to Triton's llm model (no gateway): refused as a user error, no traceback.
    for raw in (
        rb'{"prompt": "x\ud800"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "template_kwargs": '
        + nested(200).encode()
        + b"}",
        b'{"prompt": "x", "stop": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ):
        ((result, error),) = stream_raw(s.grpc_url, raw)
        assert result is None and str(error).count("invalid_request: ") == 1, error
        assert not LEAKS.search(str(error).replace("'llm_0_0'", "")), error


def test_prompts_are_measured_in_characters_before_tokens(smollm2_server):
    """Past the character limit: refused without tokenizing, in the gateway and in the model."""
    s = smollm2_server
    manifest = Manifest.load(s.engines)
    limits = PromptLimits(
        manifest.decoder["max_seq_len"], longest_token_chars(s.engines / manifest.tokenizer_dir)
    )
    text = "x" * (limits.max_chars + 1)
    raw = json.dumps({"model": s.model, "messages": [{"role": "user", "content": text}]}).encode()
    assert_refused(
        send(s, "/chat/completions", raw), 400, f"the prompt has {limits.max_chars + 1:,} characters"
    )
    ((result, error),) = stream_raw(s.grpc_url, json.dumps({"prompt": text}).encode())
    assert result is None and f"{limits.max_chars + 1:,} characters" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "a\u0000b",  # NUL
        "\u202eevil\u202c \u200f\u200e",  # RTL override, RLM/LRM marks
        "\ufeffzero\u200bwidth\u2060",  # BOM, zero-width space, word joiner
        "\U0001f600 \U00010348 漢字",  # astral characters: a surrogate pair in escaped JSON
        "\x1b[31m\r\n\t\x7f",  # control characters
    ],
)
def test_any_valid_unicode_gets_a_normal_answer(smollm2_server, text):
    s = smollm2_server
    for raw in (
        chat_json(s, json.dumps(text)),  # escaped (\\ud83d\\ude00 for the emoji)
        chat_json(s, json.dumps(text, ensure_ascii=False)),  # raw UTF-8
    ):
        response = send(s, "/chat/completions", raw)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("size", [200_000, 1_000_000])
def test_huge_headers_are_431_with_an_error_body(smollm2_server, size):
    s = smollm2_server
    body = {"model": s.model, "messages": QUESTION, "max_tokens": 2}
    headers = {**s.headers(), "x-filler": "a" * size}
    response = httpx.post(f"{s.base_url}/chat/completions", json=body, headers=headers, timeout=60)
    assert_refused(response, 431, "request headers are larger than this server accepts")
    ok = httpx.post(f"{s.base_url}/chat/completions", json=body, headers=s.headers(), timeout=60)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("logit_bias", {"42": 5}, "/chat/completions"),
        ("best_of", 3, "/completions"),
        ("suffix", "end", "/completions"),
    ],
)
def test_fields_not_implemented_are_400_naming_the_field(smollm2_server, field, value, path):
    s = smollm2_server
    body = {"model": s.model, "max_tokens": 2, field: value}
    body.update({"messages": QUESTION} if path == "/chat/completions" else {"prompt": "Hello"})
    response = send(s, path, json.dumps(body).encode())
    assert_refused(response, 400, f"{field}=", param=field)
    assert response.json()["error"]["code"] == "unsupported_parameter"


def test_unknown_fields_are_400_and_defaults_of_unimplemented_ones_pass(smollm2_server):
    s = smollm2_server
    base = {"model": s.model, "messages": QUESTION, "max_tokens": 2}
    refused = send(s, "/chat/completions", json.dumps({**base, "max_token": 5}).encode())
    assert_refused(refused, 400, "unknown field 'max_token'", param="max_token")
    nested_refusal = {**base, "messages": [{"role": "user", "content": "hi", "tool_calls": [{"id": "1"}]}]}
    assert_refused(
        send(s, "/chat/completions", json.dumps(nested_refusal).encode()), 422, "tool_calls.0.function"
    )
    defaults = {
        "n": 1,
        "logprobs": False,
        "tools": [],
        "tool_choice": "none",
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "response_format": {"type": "text"},
        "user": "someone",
        "metadata": {"k": "v"},
        "store": False,
        "parallel_tool_calls": True,
    }
    accepted = send(s, "/chat/completions", json.dumps({**base, **defaults}).encode())
    assert accepted.status_code == 200, accepted.text


def test_server_failures_say_only_what_failed_and_the_request_id():
    """A gateway whose Triton is unreachable: the gRPC error goes to the log, not to the client."""
    app = create_app(GatewayConfig(triton_url="127.0.0.1:9", model_id="m"))
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION})
        assert_refused(response, 503, "could not answer")
        rid = response.headers["x-request-id"]
        assert f"request id {rid}" in response.json()["error"]["message"]
        assert "127.0.0.1:9" not in response.text
