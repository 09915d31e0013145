"""OpenAI response bodies and SSE framing for chat and text completions."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


DONE = sse("[DONE]")


def usage(info: dict) -> dict:
    prompt, completion = info.get("prompt_tokens", 0), info.get("completion_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": info.get("cached_tokens", 0)},
    }


@dataclass
class Completion:
    """Builds the bodies of one response; `chat` picks chat.completion(.chunk) vs text_completion."""

    model: str
    chat: bool
    return_reasoning: bool = True
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _envelope(self, stream: bool, choices: list[dict]) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if stream and self.chat else ""
        )
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def first_chunk(self) -> dict | None:
        """Chat streams open with the assistant role."""
        if not self.chat:
            return None
        return self._envelope(
            True, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
        )

    def chunk(self, content: str, reasoning: str, finish_reason: str | None) -> dict | None:
        """A streamed delta, or None when there is nothing to send."""
        reasoning = reasoning if self.return_reasoning else ""
        if not (content or reasoning or finish_reason):
            return None
        if not self.chat:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope(True, [choice])
        delta: dict = {}
        if content:
            delta["content"] = content
        if reasoning:
            delta["reasoning_content"] = reasoning
        return self._envelope(True, [{"index": 0, "delta": delta, "finish_reason": finish_reason}])

    def usage_chunk(self, info: dict) -> dict:
        return {**self._envelope(True, []), "usage": usage(info)}

    def full(self, content: str, reasoning: str, finish_reason: str, info: dict) -> dict:
        if self.chat:
            message: dict = {"role": "assistant", "content": content}
            if self.return_reasoning:
                message["reasoning_content"] = reasoning or None
            choice = {"index": 0, "message": message, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope(False, [choice]), "usage": usage(info)}
