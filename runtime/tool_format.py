"""How a model family writes tool calls: the prompt text that offers tools, how past calls and
their results go back into the conversation, how calls are read out of the model's answer, and
the grammar that forces one (runtime/constraints.py compiles it).

Two formats:
  * `glm4` (glm4v family, AutoGLM): GLM-4's own. The tools are listed in the system message under
    "# 可用工具", one "## name" section each with its JSON definition; the model answers a call as
    `name\n{"arg": …}` (several calls one after the other); results come back as `observation`
    messages, GLM's tool-result role.
  * `json` (every other model): the `<tool_call>` convention many chat models are trained on. The
    tools are listed inside `<tools></tools>` in the system message; a call is
    `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`; results come back as `tool`
    messages, rendered by the model's own template.
Either way the tools reach the model through its chat template, as a system message.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text of the arguments object

    def as_openai(self, index: int) -> dict:
        return {
            "index": index,
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _function(tool: dict) -> dict:
    return tool.get("function", tool)


def _parameters(tool: dict) -> dict:
    """A forced call's arguments: the function's schema with its objects closed (no property it
    does not list), so a small model cannot wander into arguments no function takes."""
    return closed_objects(_function(tool).get("parameters") or {"type": "object", "properties": {}})


def closed_objects(schema: dict) -> dict:
    """A copy of `schema` where every object schema without `additionalProperties` gets false
    (OpenAI's strict mode)."""
    root = json.loads(json.dumps(schema))
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                node["additionalProperties"] = False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return root


# llguidance's JSON options inside a `%json` schema: compact JSON, json.dumps' separators (see
# runtime/constraints.py for why whitespace is not free).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _json_rule(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_STYLE})


MAX_PARALLEL_CALLS = 4  # a forced answer's calls; unbounded, a small model can repeat calls forever


def _repeated(item: str) -> str:
    return f"{item} ({_lark_string(chr(10))} {item}){{0,{MAX_PARALLEL_CALLS - 1}}}"


def _lark_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lark string literal


class ToolFormat(ABC):
    name: str
    tool_role: str  # the role tool results are sent back in

    @abstractmethod
    def system_text(self, tools: list[dict]) -> str:
        """The part of the system message that offers `tools` (OpenAI tool definitions)."""

    @abstractmethod
    def call_text(self, calls: list[ToolCall]) -> str:
        """An earlier assistant turn's calls, as the model would have written them."""

    @abstractmethod
    def parse(self, text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
        """(content, calls) of a whole answer; calls only to functions in `names`. Text that is
        not a well-formed call stays content."""

    @abstractmethod
    def call_grammar(self, tools: list[dict], parallel: bool) -> str:
        """A Lark grammar (llguidance's dialect, `%json` for argument schemas) whose every
        sentence is one call to one of `tools`, or up to MAX_PARALLEL_CALLS when `parallel`."""


class Glm4Format(ToolFormat):
    name, tool_role = "glm4", "observation"

    def system_text(self, tools: list[dict]) -> str:
        sections = [
            f"## {_function(t)['name']}\n\n{json.dumps(_function(t), ensure_ascii=False, indent=4)}\n"
            "在调用上述函数时，请使用 Json 格式表示调用的参数。"
            for t in tools
        ]
        return "# 可用工具\n\n" + "\n\n".join(sections)

    def call_text(self, calls: list[ToolCall]) -> str:
        return "\n".join(f"{call.name}\n{call.arguments}" for call in calls)

    def parse(self, text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
        calls, at, decoder = [], 0, json.JSONDecoder()
        while True:
            start = len(text) - len(text[at:].lstrip())
            name, newline, _ = text[start:].partition("\n")
            if not newline or name.strip() not in names:
                break
            body = start + len(name) + 1
            try:
                arguments, end = decoder.raw_decode(text, body + len(text[body:]) - len(text[body:].lstrip()))
            except json.JSONDecodeError:
                break
            if not isinstance(arguments, dict):
                break
            calls.append(ToolCall(name.strip(), json.dumps(arguments, ensure_ascii=False)))
            at = end
        if not calls:
            return text, []
        return text[at:].strip(), calls

    def call_grammar(self, tools: list[dict], parallel: bool) -> str:
        rules = [
            f"call_{i}: {_lark_string(_function(t)['name'] + chr(10))} args_{i}\n"
            f"args_{i}: {_json_rule(_parameters(t))}"
            for i, t in enumerate(tools)
        ]
        calls = " | ".join(f"call_{i}" for i in range(len(tools)))
        start = f"start: {_repeated('call')}" if parallel else "start: call"
        return "\n".join([start, f"call: {calls}", *rules])


class JsonFormat(ToolFormat):
    name, tool_role = "json", "tool"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def system_text(self, tools: list[dict]) -> str:
        listed = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listed}\n"
            "</tools>\n\nFor each function call, return a json object with function name and arguments "
            f"within {self.OPEN}{self.CLOSE} XML tags:\n{self.OPEN}\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n'
            f"{self.CLOSE}"
        )

    def call_text(self, calls: list[ToolCall]) -> str:
        return "\n".join(
            f'{self.OPEN}\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n{self.CLOSE}'
            for c in calls
        )

    def parse(self, text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
        calls, rest, at = [], [], 0
        while (start := text.find(self.OPEN, at)) >= 0:
            end = text.find(self.CLOSE, start)
            if end < 0:
                break
            try:
                call = json.loads(text[start + len(self.OPEN) : end])
            except json.JSONDecodeError:
                break
            if not (
                isinstance(call, dict)
                and call.get("name") in names
                and isinstance(call.get("arguments"), dict)
            ):
                break
            rest.append(text[at:start])
            calls.append(ToolCall(call["name"], json.dumps(call["arguments"], ensure_ascii=False)))
            at = end + len(self.CLOSE)
        if not calls:
            return text, []
        return ("".join(rest) + text[at:]).strip(), calls

    def call_grammar(self, tools: list[dict], parallel: bool) -> str:
        rules = []
        for i, t in enumerate(tools):
            schema = {
                "type": "object",
                "properties": {"name": {"const": _function(t)["name"]}, "arguments": _parameters(t)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            rules.append(f"call_{i}: {_json_rule(schema)}")
        calls = " | ".join(f"call_{i}" for i in range(len(tools)))
        one = f"{_lark_string(self.OPEN + chr(10))} call {_lark_string(chr(10) + self.CLOSE)}"
        start = f"start: {_repeated('one')}" if parallel else "start: one"
        return "\n".join([start, f"one: {one}", f"call: {calls}", *rules])


FORMATS: dict[str, ToolFormat] = {f.name: f for f in (Glm4Format(), JsonFormat())}


def format_for(family: str) -> ToolFormat:
    """The glm4v family speaks GLM-4's format; every other model the JSON convention."""
    return FORMATS["glm4" if family.startswith("glm") else "json"]
