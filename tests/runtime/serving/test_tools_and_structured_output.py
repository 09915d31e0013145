"""Tool calls and structured output through the real gateway and tritonserver, with the `openai`
client and LangChain: forced calls always parse (GLM-4's format on glm4v-tiny, the `<tool_call>`
convention on smollm2-135m), streamed as id and name first, then arguments; tool results go
back into the conversation; json_schema answers validate, streamed and not."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
from openai import OpenAI

TAP = {
    "type": "function",
    "function": {
        "name": "tap",
        "description": "Tap the screen at a point.",
        "parameters": {
            "type": "object",
            "properties": {
                "x": {"type": "integer", "minimum": 0, "maximum": 999},
                "y": {"type": "integer", "minimum": 0, "maximum": 999},
            },
            "required": ["x", "y"],
            "additionalProperties": False,
        },
    },
}
LAUNCH = {
    "type": "function",
    "function": {
        "name": "launch",
        "description": "Open an app by name.",
        "parameters": {
            "type": "object",
            "properties": {"app": {"enum": ["Settings", "Camera", "Maps"]}},
            "required": ["app"],
            "additionalProperties": False,
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (TAP, LAUNCH)}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Oslo", "Lima"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Open the Settings app, please."}]


@pytest.fixture(scope="module", params=["smollm2", "glm4v"])
def served(request):
    server = request.getfixturevalue(f"{request.param}_server")
    return server, OpenAI(base_url=server.base_url, api_key=server.api_key or "EMPTY", max_retries=0)


def _check_calls(calls, names=None) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_and_named_choices_always_call(served):
    server, client = served
    answer = client.chat.completions.create(
        model=server.model,
        messages=ASK,
        tools=[TAP, LAUNCH],
        tool_choice="required",
        max_tokens=200,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    _check_calls(choice.message.tool_calls)
    named = client.chat.completions.create(
        model=server.model,
        messages=ASK,
        tools=[TAP, LAUNCH],
        tool_choice={"type": "function", "function": {"name": "launch"}},
        max_tokens=200,
        temperature=0.9,
        seed=1,
    )
    _check_calls(named.choices[0].message.tool_calls, {"launch"})
    assert len(named.choices[0].message.tool_calls) == 1  # a named choice is one call


def test_streamed_calls_come_as_id_and_name_then_arguments(served):
    server, client = served
    deltas, finish = [], None
    for chunk in client.chat.completions.create(
        model=server.model,
        messages=ASK,
        tools=[LAUNCH],
        tool_choice="required",
        max_tokens=200,
        stream=True,
        temperature=0,
    ):
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    first = deltas[0]
    assert first.id.startswith("call_") and first.function.name == "launch"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    jsonschema.validate(json.loads(arguments), SCHEMAS["launch"])


def test_tool_results_go_back_into_the_conversation(served):
    server, client = served
    first = client.chat.completions.create(
        model=server.model,
        messages=ASK,
        tools=[LAUNCH],
        tool_choice="required",
        max_tokens=200,
        temperature=0,
    )
    call = first.choices[0].message.tool_calls[0]
    conversation = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"opened": "Settings"}'},
    ]
    second = client.chat.completions.create(
        model=server.model, messages=conversation, tools=[LAUNCH], max_tokens=8, temperature=0
    )
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The call and its result are in the prompt the model read.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10


def test_json_schema_answers_validate_streamed_and_not(served):
    server, client = served
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    ask = [{"role": "user", "content": "Invent a person."}]
    for seed in (0, 1):
        answer = client.chat.completions.create(
            model=server.model,
            messages=ask,
            response_format=response_format,
            max_tokens=80,
            temperature=1.0,
            seed=seed,
        )
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content), PERSON)
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=server.model,
            messages=ask,
            response_format=response_format,
            max_tokens=80,
            stream=True,
            temperature=0,
        )
        if chunk.choices
    )
    jsonschema.validate(json.loads(text), PERSON)


def test_langchain_bind_tools(smollm2_server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="autoglm-phone-9b" if "autoglm-phone-9b" in smollm2_server.model else smollm2_server.model,
        base_url=smollm2_server.base_url,
        api_key=smollm2_server.api_key,
        temperature=0,
        max_tokens=200,
        max_retries=0,
    )
    message = llm.bind_tools([TAP, LAUNCH], tool_choice="required").invoke("Open the Camera app.")
    assert message.tool_calls
    for call in message.tool_calls:
        jsonschema.validate(call["args"], SCHEMAS[call["name"]])


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"tools": [TAP], "tool_choice": {"type": "function", "function": {"name": "swipe"}}},
            "tool_choice",
            "not in tools",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [TAP, TAP]}, "tools", "unique"),
        (
            {"tools": [TAP], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
            "tool_choice forces a call",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
            "schema is required",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
            None,
            "could not be compiled",
        ),
    ],
)
def test_bad_tool_and_format_requests_are_400(smollm2_server, body, param, words):
    s = smollm2_server
    payload = {"model": s.model, "messages": ASK, "max_tokens": 4, **body}
    response = httpx.post(
        f"{s.base_url}/chat/completions", content=json.dumps(payload), headers=s.headers(), timeout=60
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error["message"] and (param is None or error["param"] == param)
    assert "nonsense" not in error["message"] and "/" not in error["message"].replace("json_schema", "")
