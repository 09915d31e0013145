"""Grammar-constrained decoding on the real scheduler and engines (glm4v-tiny, fp32; its weights
are random, so only the grammar can make its answers valid JSON): every constrained answer
parses and validates, a free request batched with constrained ones is unchanged, and a schema
that cannot be compiled is a user error."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from runtime.constraints import GrammarCompiler, GrammarError
from runtime.llm_engine import LLMEngine
from runtime.prompt import PreparedPrompt
from runtime.request import Request
from runtime.sampling import SamplingParams
from runtime.tool_format import FORMATS, ToolCall

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
    },
    "required": ["name", "age", "tags", "zip"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "tap",
            "parameters": {
                "type": "object",
                "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                "required": ["x", "y"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "type_text",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string", "maxLength": 20}},
                "required": ["text"],
                "additionalProperties": False,
            },
        },
    },
]


@pytest.fixture(scope="module")
def engine(glm4v_tiny_engines) -> LLMEngine:
    return LLMEngine(glm4v_tiny_engines, "fp32", threads=1)


@pytest.fixture(scope="module")
def compiler(engine) -> GrammarCompiler:
    return GrammarCompiler(engine.tokenizer.hf, engine.limits.vocab_size, engine.tokenizer.stop_token_ids)


def _run(engine: LLMEngine, requests: list[Request]) -> dict[str, list[int]]:
    for request in requests:
        engine.add(request)
    out = {r.request_id: [] for r in requests}
    while engine.has_work:
        for event in engine.step():
            out[event.request_id].append(event.token_id)
    return out


def _text(engine: LLMEngine, ids: list[int]) -> str:
    stops = set(engine.tokenizer.stop_token_ids)
    return engine.tokenizer.hf.decode([i for i in ids if i not in stops])


def _params(engine, temperature=0.0, seed=None) -> SamplingParams:
    return SamplingParams(
        temperature=temperature, seed=seed, max_tokens=200, stop_token_ids=engine.tokenizer.stop_token_ids
    )


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_answers_validate_and_free_requests_are_unchanged(engine, compiler, temperature):
    prompt = PreparedPrompt(engine.tokenizer.hf.encode("Describe a person as JSON:"))
    free_alone = _run(engine, [Request("free", prompt, _params(engine))])["free"]
    constrained = [
        Request(
            f"json-{i}",
            prompt,
            _params(engine, temperature, seed=i),
            constraint=compiler.compile({"type": "json_schema", "schema": SCHEMA}),
        )
        for i in range(3)
    ]
    out = _run(engine, [*constrained, Request("free", prompt, _params(engine))])
    assert out["free"] == free_alone  # batched with masked rows, its own row is untouched
    for request in constrained:
        answer = json.loads(_text(engine, out[request.request_id]))
        jsonschema.validate(answer, SCHEMA)
        assert request.finish_reason == "stop"
    assert engine.kv.num_free_blocks == engine.kv.num_blocks - 1


def test_json_object_answers_parse(engine, compiler):
    """No schema bounds a json_object's strings: random weights may write one until max_tokens
    ("length", as OpenAI's API answers too); every answer that ends, ends as an object."""
    prompt = PreparedPrompt(engine.tokenizer.hf.encode("Anything as JSON:"))
    requests = [
        Request(
            f"obj-{seed}",
            prompt,
            _params(engine, 1.0, seed),
            constraint=compiler.compile({"type": "json_object"}),
        )
        for seed in range(4)
    ]
    out = _run(engine, requests)
    ended = [r for r in requests if r.finish_reason == "stop"]
    assert ended
    for request in ended:
        assert isinstance(json.loads(_text(engine, out[request.request_id])), dict)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("parallel", [False, True])
def test_forced_tool_calls_parse_into_valid_calls(engine, compiler, fmt, parallel):
    fmt = FORMATS[fmt]
    grammar = {"type": "lark", "grammar": fmt.call_grammar(TOOLS, parallel)}
    prompt = PreparedPrompt(engine.tokenizer.hf.encode("Open the settings app."))
    request = Request("call", prompt, _params(engine, 1.0, seed=3), constraint=compiler.compile(grammar))
    text = _text(engine, _run(engine, [request])["call"])
    content, calls = fmt.parse(text, {"tap", "type_text"})
    assert calls and not content, text
    assert parallel or len(calls) == 1
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_call_written_back_parses_to_itself(fmt):
    fmt = FORMATS[fmt]
    calls = [ToolCall("tap", '{"x": 1, "y": 2}'), ToolCall("type_text", '{"text": "hi \\"there\\""}')]
    assert fmt.parse(fmt.call_text(calls), {"tap", "type_text"}) == ("", calls)
    assert fmt.parse("Sure, tapping now.", {"tap"}) == ("Sure, tapping now.", [])
    assert fmt.parse(fmt.call_text(calls[:1]), {"other"})[1] == []  # unknown functions stay text


def test_the_mask_forbids_what_the_schema_does_not_allow(engine, compiler):
    constraint = compiler.compile({"type": "json_schema", "schema": SCHEMA})
    hf = engine.tokenizer.hf
    for token in hf.encode('{"name": "Al", "age": ', add_special_tokens=False):
        constraint.accept(token)
    logits = np.zeros(engine.limits.vocab_size, np.float32)
    constraint.mask(logits)
    allowed = {hf.decode([i]) for i in np.flatnonzero(np.isfinite(logits))}
    assert allowed and all(text.strip()[:1].isdigit() for text in allowed)  # an integer comes next


def test_a_schema_that_cannot_compile_is_a_user_error(compiler):
    with pytest.raises(GrammarError, match="could not be compiled") as error:
        compiler.compile(
            {"type": "json_schema", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}},
            "req-1",
        )
    assert "nonsense" not in str(error.value)  # the library's words stay in the log
    with pytest.raises(GrammarError):
        compiler.compile({"type": "lark", "grammar": "start: undefined_rule"})
