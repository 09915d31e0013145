"""OpenAI tool calling over a model's own tool format (runtime/tool_format.py).

In: the request's `tools` are written into the system message, earlier assistant `tool_calls`
into the assistant turns, and `tool` results into the format's tool-result role, so the model's
chat template renders them like any conversation. `tool_choice` "required" or a named function
adds a grammar (runtime/constraints.py) so the answer is a well-formed call; "none" offers no
tools; "auto" lets the model choose.
Out: `ToolCallParser` reads each choice's text as it streams. An answer that opens like a call is
held back and turned into `tool_calls` (GLM-4: id and name as soon as the name line is complete,
then the arguments as they come; the `<tool_call>` convention: each call once it closes);
anything else passes through as content.
"""

from __future__ import annotations

from runtime.gateway.errors import APIError
from runtime.gateway.schemas import ChatCompletionRequest
from runtime.tool_format import Glm4Format, ToolCall, ToolFormat, closed_objects


class ToolPlan:
    """What one chat request asks of tools, checked: the functions offered, the grammar (if the
    choice forces a call) and whether the answer is parsed for calls at all."""

    def __init__(self, body: ChatCompletionRequest, fmt: ToolFormat) -> None:
        self.format = fmt
        tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
        names = [t["function"]["name"] for t in tools]
        if len(set(names)) != len(names):
            raise APIError(400, "tools: function names must be unique", param="tools")
        choice = body.tool_choice if body.tool_choice is not None else ("auto" if tools else "none")
        if not tools and choice not in ("none", "auto"):
            raise APIError(400, "tool_choice needs tools to choose from", param="tool_choice")
        if not isinstance(choice, str):  # {"type": "function", "function": {"name": …}}
            wanted = choice.function.name
            if wanted not in names:
                raise APIError(
                    400, f"tool_choice names {wanted!r}, which is not in tools", param="tool_choice"
                )
            tools = [t for t in tools if t["function"]["name"] == wanted]
        self.tools = [] if choice == "none" else tools
        self.forced = choice not in ("none", "auto")
        self.parallel = body.parallel_tool_calls is not False and choice in ("auto", "required")
        self.names = {t["function"]["name"] for t in self.tools}

    def grammar(self) -> dict | None:
        if not self.forced:
            return None
        return {"type": "lark", "grammar": self.format.call_grammar(self.tools, self.parallel)}

    def messages(self, wire_messages: list[dict], originals) -> list[dict]:
        """The conversation with tools offered and earlier calls and results in the format."""
        out = []
        for message, original in zip(wire_messages, originals, strict=True):
            message = dict(message)
            if original.tool_calls:
                calls = [ToolCall(c.function.name, c.function.arguments) for c in original.tool_calls]
                text = message.get("content") or ""
                message["content"] = (
                    text + "\n" if isinstance(text, str) and text else ""
                ) + self.format.call_text(calls)
            if message["role"] == "tool":
                message["role"] = self.format.tool_role
                message.pop("tool_call_id", None)
            out.append(message)
        if self.tools:
            offer = self.format.system_text(self.tools)
            if out and out[0]["role"] == "system" and isinstance(out[0]["content"], str):
                out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{offer}"}
            else:
                out.insert(0, {"role": "system", "content": offer})
        return out

    def parser(self):
        return (lambda: ToolCallParser(self.format, self.names)) if self.tools else None


class ToolCallParser:
    """One choice's output: content passes through until the answer opens like a call."""

    def __init__(self, fmt: ToolFormat, names: set[str]) -> None:
        self.format, self.names = fmt, names
        self.glm = isinstance(fmt, Glm4Format)
        self.mode = "undecided"  # then "text" or "call"
        self.text = ""  # everything held since the answer began (call mode)
        self.streamed_args = 0  # GLM: argument characters of the first call already sent
        self.first: dict | None = None  # GLM: the first call's opening delta, once sent

    def push(self, content: str) -> tuple[str, list[dict]]:
        if self.mode == "text":
            return content, []
        self.text += content
        if self.mode == "undecided":
            self.mode = self._decide()
            if self.mode == "text":
                text, self.text = self.text, ""
                return text, []
            if self.mode == "undecided":
                return "", []
        return "", self._stream_first_call() if self.glm else []

    def finish(self, finish_reason: str) -> tuple[str, list[dict], str]:
        if self.mode == "text":
            return "", [], finish_reason
        content, calls = self.format.parse(self.text, self.names)
        if not calls:
            if self.first is not None:  # a call was announced but never completed
                return "", [], finish_reason
            return self.text, [], finish_reason
        deltas = self._stream_first_call() if self.glm else []
        start = 1 if self.first is not None else 0
        deltas += [call.as_openai(i) for i, call in enumerate(calls[start:], start)]
        reason = "tool_calls" if finish_reason == "stop" else finish_reason
        return content, deltas, reason

    def _decide(self) -> str:
        head = self.text.lstrip()
        if self.glm:
            line, newline, _ = head.partition("\n")
            if newline:
                return "call" if line.strip() in self.names else "text"
            return "undecided" if any(n.startswith(line) for n in self.names) else "text"
        opening = self.format.OPEN
        if head.startswith(opening):
            return "call"
        return "undecided" if opening.startswith(head) else "text"

    def _stream_first_call(self) -> list[dict]:
        """GLM-4: the first call's name as soon as its line is complete, then its arguments as
        they arrive, up to the end of its JSON object."""
        head = self.text.lstrip()
        name, _, rest = head.partition("\n")
        deltas = []
        if self.first is None:
            self.first = ToolCall(name.strip(), "").as_openai(0)
            deltas.append(self.first)
        args = rest[: _object_end(rest)]
        if len(args) > self.streamed_args:
            deltas.append({"index": 0, "function": {"arguments": args[self.streamed_args :]}})
            self.streamed_args = len(args)
        return deltas


def _object_end(text: str) -> int:
    """Length of the first JSON object in `text` (all of it while the object is still open)."""
    depth, in_string, escaped = 0, False, False
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def response_format_grammar(response_format) -> dict | None:
    """`response_format` as a grammar: json_object, or json_schema (strict or not, the schema is
    always enforced: silently returning free text is what clients complain about). `strict`
    adds OpenAI's strict-mode rule, no properties beyond those listed, where a schema is silent."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "json_object"}
    if response_format.json_schema is None or response_format.json_schema.schema_ is None:
        raise APIError(400, "response_format.json_schema.schema is required", param="response_format")
    schema = response_format.json_schema.schema_
    return {
        "type": "json_schema",
        "schema": closed_objects(schema) if response_format.json_schema.strict else schema,
    }
