"""The `llm` Triton model's wire format, shared by the gateway (client) and the model (server).

Inputs (all BYTES):
    request  [1]   JSON, see `GenerateRequest` (or {"op": "stats"} for a metrics snapshot)
    images   [N]   raw image files (PNG/JPEG…), in order of appearance; optional
    audios   [N]   raw audio files (WAV…), in order of appearance; optional
Outputs, one response per generated token (decoupled), the last one with the FINAL flag:
    content        BYTES [1]  answer text delta (UTF-8, never half a character)
    reasoning      BYTES [1]  text delta inside <think>…</think>
    token_ids      INT64 [n]  the token(s) this response covers
    finish_reason  BYTES [1]  "" while generating; "stop" | "length" on the last response
    info           BYTES [1]  JSON: usage on the last response ({} otherwise); the stats snapshot
                              for {"op": "stats"}
Errors are sent as a response error whose message starts with `ERROR_USER` (the request was bad:
the gateway answers 400) or `ERROR_SERVER`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

ERROR_USER = "invalid_request: "
ERROR_SERVER = "server_error: "

OP_GENERATE = "generate"
OP_STATS = "stats"


class WireError(ValueError):
    """A request JSON that does not follow the format above."""


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. Exactly one of `messages` (chat: the template is applied) and `prompt`.

    messages: [{"role": str, "content": str | [{"type": "text", "text": str} | {"type": "image"}
    | {"type": "audio"}]}], media parts matching the `images`/`audios` tensors in order.
    """

    messages: list[dict] | None = None
    prompt: str | None = None
    max_tokens: int | None = None  # None: up to the engines' max_seq_len
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    template_kwargs: dict = field(default_factory=dict)
    continue_final_message: bool = False  # extend the last (assistant) message instead of a new turn
    op: str = OP_GENERATE

    def to_json(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> GenerateRequest:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
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

    def validate(self) -> None:
        if self.op == OP_STATS:
            return
        if self.op != OP_GENERATE:
            raise WireError(f"op must be {OP_GENERATE!r} or {OP_STATS!r}, got {self.op!r}")
        if (self.messages is None) == (self.prompt is None):
            raise WireError("give exactly one of 'messages' (chat) and 'prompt' (plain completion)")
        if self.messages is not None and not (
            isinstance(self.messages, list)
            and self.messages
            and all(isinstance(m, dict) for m in self.messages)
        ):
            raise WireError("'messages' must be a non-empty list of {'role', 'content'} objects")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise WireError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, int | float) or not math.isfinite(self.temperature):
            raise WireError(f"temperature must be a number, got {self.temperature!r}")
        if not (isinstance(self.stop, list) and all(isinstance(s, str) for s in self.stop)):
            raise WireError(f"stop must be a list of strings, got {self.stop!r}")
        if not isinstance(self.template_kwargs, dict):
            raise WireError(f"template_kwargs must be an object, got {self.template_kwargs!r}")


STATS_REQUEST = GenerateRequest(op=OP_STATS)
