"""The `llm` Triton model's wire format, shared by the gateway (client) and the model (server).

Inputs (all BYTES):
    request  [1]   JSON, see `GenerateRequest`; or {"op": "stats"} for a metrics snapshot; or
                   {"op": "cancel", "request_id": ID} to drop request ID (see `cancel_request`)
    images   [N]   raw image files (PNG/JPEG…), in order of appearance; optional
    audios   [N]   raw audio files (WAV…), in order of appearance; optional
Outputs, one response per generated token (decoupled), the last one with the FINAL flag:
    content        BYTES [1]  answer text delta (UTF-8, never half a character)
    reasoning      BYTES [1]  text delta inside <think>…</think>
    token_ids      INT64 [n]  the token(s) this response covers
    finish_reason  BYTES [1]  "" while generating; "stop" | "length" on the last response
    info           BYTES [1]  JSON: usage on the last response; "logprobs" (a list of one entry
                              per token: token, logprob, bytes, top_logprobs) when asked; the
                              stats snapshot for {"op": "stats"}
Errors are sent as a response error whose message starts with `ERROR_USER` (the request was bad:
the gateway answers 400, with the message) or `ERROR_SERVER` (the gateway answers 503 with the
request id only: the detail stays in the server log).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields

from runtime.logprobs import MAX_TOP

ERROR_USER = "invalid_request: "
ERROR_SERVER = "server_error: "

OP_GENERATE = "generate"
OP_STATS = "stats"
OP_CANCEL = "cancel"
FINISH_CANCELLED = "cancelled"  # the finish_reason answering a cancel op

MAX_NESTING = 16  # template kwargs are small option trees; deeper is hostile input
MAX_GRAMMAR_NESTING = 64  # JSON schemas nest deeper than options, still far from hostile depths
# apply_chat_template's own parameters and the template's helpers: a template variable must
# not change how the template is chosen or rendered, only what it renders
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "raise_exception",
        "strftime_now",
        "dict",
        "namespace",
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "processor_kwargs",
    }
)
_SURROGATE = re.compile("[\ud800-\udfff]")


class WireError(ValueError):
    """A request JSON that does not follow the format above; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def nesting_depth(value, stop_after: int = MAX_NESTING) -> int:
    """Depth of nested lists/dicts (a scalar is 0), counted without recursion; stops counting
    past `stop_after` so a hostile value costs no more than the check needs."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > stop_after:
                return deepest
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_text(text: str, param: str) -> None:
    """Text must encode as UTF-8: a lone UTF-16 surrogate (valid as a JSON escape) does not."""
    if text.isascii():
        return
    bad = _SURROGATE.search(text)
    if bad:
        raise WireError(
            f"{param} has a lone UTF-16 surrogate U+{ord(bad.group()):04X} at character {bad.start()}; "
            "text must be valid Unicode (send astral characters as a surrogate pair or as UTF-8)",
            param=param,
        )


def _strings(value, param: str):
    """(string, where) for every key and string inside a JSON value, without recursion."""
    stack = [(value, param)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            yield item, where
        elif isinstance(item, dict):
            for key, child in item.items():
                yield str(key), where
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}.{i}") for i, child in enumerate(item))


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. Exactly one of `messages` (chat: the template is applied) and `prompt`.

    messages: [{"role": str, "content": str | [{"type": "text", "text": str} | {"type": "image"}
    | {"type": "audio"}], "name"?: str}], media parts matching the `images`/`audios` tensors in order.
    """

    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = None  # None: up to the engines' max_seq_len
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    template_kwargs: dict = field(default_factory=dict)
    continue_final_message: bool = False  # extend the last (assistant) message instead of a new turn
    logprobs: int | None = None  # None: off; n in 0..MAX_TOP: each token's logprob and its n best
    # The output must follow: {"type": "json_object"} | {"type": "json_schema", "schema": {...}}
    # | {"type": "lark", "grammar": "..."} (runtime/constraints.py)
    grammar: dict | None = None
    precision: str | None = None  # the engine to run on (a power policy's choice); None: the default
    request_id: str = ""  # the gateway's id of the HTTP request, for the logs on both sides
    op: str = OP_GENERATE

    def to_json(self) -> bytes:
        # A shallow dict: `asdict` would deep-copy (and recurse into) the template kwargs.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps({k: v for k, v in data.items() if v is not None}, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> GenerateRequest:
        try:
            data = json.loads(raw)
        except RecursionError:
            raise WireError(f"the request JSON nests too deeply (at most {MAX_NESTING} levels)") from None
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise WireError(f"the request tensor is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise WireError(f"the request JSON must be an object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise WireError(
                f"unknown request fields {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
            )
        request = cls(**data)
        request.validate()
        return request

    def text_chars(self) -> int:
        """Characters of text the prompt is made of (the template adds to it, never removes)."""
        if self.prompt is not None:
            return len(self.prompt)
        total = sum(len(s) for s, _ in _strings(self.template_kwargs, ""))
        for message in self.messages or []:
            content = message.get("content")
            if isinstance(content, str):
                total += len(content)
            elif isinstance(content, list):
                total += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
        return total

    def validate(self) -> None:
        """Raise WireError naming the first field that is off; the checks are O(size), no recursion."""
        if self.op == OP_STATS:
            return
        if self.op == OP_CANCEL:
            if not (isinstance(self.request_id, str) and self.request_id):
                raise WireError("a cancel op needs the request_id of the request to drop")
            return
        if self.op != OP_GENERATE:
            raise WireError(f"op must be {OP_GENERATE!r}, {OP_STATS!r} or {OP_CANCEL!r}, got {self.op!r}")
        if (self.messages is None) == (self.prompt is None):
            raise WireError("give exactly one of 'messages' (chat) and 'prompt' (plain completion)")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise WireError("prompt must be a string", param="prompt")
        if self.messages is not None:
            self._validate_messages()
        self._validate_numbers()
        if not (isinstance(self.stop, list) and all(isinstance(s, str) for s in self.stop)):
            raise WireError(f"stop must be a list of strings, got {self.stop!r}", param="stop")
        if not isinstance(self.continue_final_message, bool) or not isinstance(self.request_id, str):
            raise WireError("continue_final_message must be a boolean and request_id a string")
        self._validate_template_kwargs()
        self._validate_grammar()
        if self.precision is not None and self.precision not in ("fp32", "fp16", "int8", "int4"):
            raise WireError(
                f"precision must be fp32, fp16, int8 or int4, got {self.precision!r}", "precision"
            )
        if self.prompt is not None:
            check_text(self.prompt, "prompt")
        for i, stop in enumerate(self.stop):
            check_text(stop, f"stop.{i}")

    def _validate_messages(self) -> None:
        if not (isinstance(self.messages, list) and self.messages):
            raise WireError("'messages' must be a non-empty list of {'role', 'content'} objects")
        if nesting_depth(self.messages) > MAX_NESTING:
            raise WireError(f"messages nest deeper than {MAX_NESTING} levels", param="messages")
        for i, message in enumerate(self.messages):
            where = f"messages.{i}"
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise WireError(f"{where} must be an object with a string 'role'", param=where)
            content = message.get("content")
            if isinstance(content, list):
                for j, part in enumerate(content):
                    if not (isinstance(part, dict) and part.get("type") in ("text", "image", "audio")):
                        raise WireError(f"{where}.content.{j} must be a text, image or audio part")
                    if part["type"] == "text" and not isinstance(part.get("text"), str):
                        raise WireError(f"{where}.content.{j}.text must be a string")
            elif not (content is None or isinstance(content, str)):
                raise WireError(f"{where}.content must be a string or a list of parts", param=where)
            for text, at in _strings(message, where):
                check_text(text, at)

    def _validate_numbers(self) -> None:
        def number(value) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

        def integer(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if self.max_tokens is not None and not (integer(self.max_tokens) and self.max_tokens >= 1):
            raise WireError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}", "max_tokens")
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
            if not number(getattr(self, name)):
                raise WireError(f"{name} must be a number, got {getattr(self, name)!r}", param=name)
        if not integer(self.top_k):
            raise WireError(f"top_k must be an integer, got {self.top_k!r}", param="top_k")
        if self.seed is not None and not integer(self.seed):
            raise WireError(f"seed must be an integer, got {self.seed!r}", param="seed")
        if self.logprobs is not None and not (integer(self.logprobs) and 0 <= self.logprobs <= MAX_TOP):
            raise WireError(
                f"logprobs must be an integer from 0 to {MAX_TOP}, got {self.logprobs!r}", "logprobs"
            )

    def _validate_grammar(self) -> None:
        grammar = self.grammar
        if grammar is None:
            return
        kinds = {"json_object": (), "json_schema": ("schema",), "lark": ("grammar",)}
        if not (isinstance(grammar, dict) and grammar.get("type") in kinds):
            raise WireError(f"grammar must be an object whose type is one of {sorted(kinds)}", "grammar")
        for key in kinds[grammar["type"]]:
            if key not in grammar:
                raise WireError(f"a {grammar['type']} grammar needs {key!r}", "grammar")
        if nesting_depth(grammar, MAX_GRAMMAR_NESTING) > MAX_GRAMMAR_NESTING:
            raise WireError(f"the grammar nests deeper than {MAX_GRAMMAR_NESTING} levels", "grammar")
        if grammar["type"] == "lark" and not isinstance(grammar["grammar"], str):
            raise WireError("a lark grammar is a string", "grammar")
        if grammar["type"] == "json_schema" and not isinstance(grammar["schema"], dict):
            raise WireError("a json_schema grammar's schema is an object", "grammar")
        for text, where in _strings(grammar, "grammar"):
            check_text(text, where)

    def _validate_template_kwargs(self) -> None:
        param = "chat_template_kwargs"
        if not isinstance(self.template_kwargs, dict):
            raise WireError(f"{param} must be an object, got {self.template_kwargs!r}", param=param)
        reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(self.template_kwargs))
        if reserved:
            raise WireError(
                f"{param} may not set {reserved}: they are chat-template settings, not template "
                "variables (use continue_final_message to extend the last assistant message)",
                param=param,
            )
        if nesting_depth(self.template_kwargs) > MAX_NESTING:
            raise WireError(f"{param} nests deeper than {MAX_NESTING} levels", param=param)
        for text, where in _strings(self.template_kwargs, param):
            check_text(text, where)


STATS_REQUEST = GenerateRequest(op=OP_STATS)


def cancel_request(request_id: str) -> GenerateRequest:
    """Drop request `request_id` (sent by the same client, earlier) wherever it is; answered at
    once with finish_reason "cancelled", and the dropped request's stream ends with its FINAL flag.

    Why not Triton's own cancellation (cancelling the gRPC stream)? tritonserver 2.51, the one the
    nvidia-pytriton wheel bundles, can abort on it (`GRPC_CALL_ERROR_TOO_MANY_OPERATIONS` when a
    cancellation crosses a response; triton-inference-server/server#7368, fixed in 24.12). Many
    clients leaving at once took the whole server down within seconds here."""
    return GenerateRequest(op=OP_CANCEL, request_id=request_id)
