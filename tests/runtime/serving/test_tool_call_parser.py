"""The gateway's tool-call parser on streamed text, piece by piece as tokens arrive: calls become
OpenAI `tool_calls` deltas (GLM-4: id and name first, then argument pieces), other answers pass
through as content unchanged, whatever the split."""

from __future__ import annotations

import json

import pytest

from runtime.gateway.generation import whole_calls
from runtime.gateway.tool_calls import ToolCallParser
from runtime.tool_format import FORMATS, ToolCall

NAMES = {"tap", "type_text"}


def _feed(fmt, text: str, size: int):
    parser = ToolCallParser(FORMATS[fmt], NAMES)
    content, deltas = [], []
    for start in range(0, len(text), size):
        piece, calls = parser.push(text[start : start + size])
        content.append(piece)
        deltas.append(calls)
    tail, calls, reason = parser.finish("stop")
    content.append(tail)
    deltas.append(calls)
    return "".join(content), deltas, reason


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_calls_stream_as_tool_call_deltas(fmt, size):
    calls = [ToolCall("tap", '{"x": 10, "y": 20}'), ToolCall("type_text", '{"text": "a } b"}')]
    content, deltas, reason = _feed(fmt, FORMATS[fmt].call_text(calls), size)
    assert content == "" and reason == "tool_calls"
    flat = [d for step in deltas for d in step]
    whole = whole_calls(flat)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole] == [
        (c.name, json.loads(c.arguments)) for c in calls
    ]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in whole)
    first = next(d for d in flat if d["index"] == 0)
    assert first["function"]["name"] == "tap" and "id" in first  # the name comes first
    if fmt == "glm4" and size == 1:  # then the arguments, piece by piece, before the answer ends
        pieces = [d for step in deltas[:-1] for d in step if d["index"] == 0 and "id" not in d]
        assert len(pieces) > 5


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize(
    "text", ["Paris.", "tap the button", "<tool", "<tool_call>\nnot json\n</tool_call>", ""]
)
def test_other_answers_pass_through(fmt, text):
    content, deltas, reason = _feed(fmt, text, 2)
    assert content == text and not any(deltas) and reason == "stop"


def test_a_truncated_answer_keeps_its_finish_reason():
    parser = ToolCallParser(FORMATS["glm4"], NAMES)
    parser.push('tap\n{"x": 1, ')
    _, _, reason = parser.finish("length")
    assert reason == "length"
