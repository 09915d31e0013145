"""OpenAI response bodies and SSE framing for chat and text completions, with `n` choices."""

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
class ChoiceResult:
    """One whole choice: its text, reasoning, finish reason and per-token logprobs (chat form)."""

    content: str
    reasoning: str
    finish_reason: str
    logprobs: list[dict] = field(default_factory=list)
    tool_calls: list[dict] | None = None


@dataclass
class Completion:
    """Builds the bodies of one response; `chat` picks chat.completion(.chunk) vs text_completion.
    `logprobs`: the client asked for them. `echo`: the prompt text, put before a text completion."""

    model: str
    chat: bool
    return_reasoning: bool = True
    logprobs: bool = False
    echo: str = ""
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    _offsets: dict[int, int] = field(default_factory=dict)  # text_offset so far, per choice
    precision: str | None = None  # of the engine that answered, once known (system_fingerprint)

    def _envelope(self, stream: bool, choices: list[dict]) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if stream and self.chat else ""
        )
        body = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.precision:
            body["system_fingerprint"] = f"autoglm-trt-{self.precision}"
        return body

    def first_chunk(self, n: int = 1) -> dict | None:
        """Chat streams open with the assistant role; echoed text completions with the prompt."""
        if self.chat:
            delta = {"role": "assistant", "content": ""}
            return self._envelope(
                True, [{"index": i, "delta": delta, "finish_reason": None} for i in range(n)]
            )
        if self.echo:
            return self._envelope(
                True,
                [{"index": i, "text": self.echo, "logprobs": None, "finish_reason": None} for i in range(n)],
            )
        return None

    def chunk(
        self,
        content: str,
        reasoning: str,
        finish_reason: str | None,
        logprobs: list[dict] | None = None,
        index: int = 0,
        tool_calls: list[dict] | None = None,
    ) -> dict | None:
        """A streamed delta, or None when there is nothing to send."""
        reasoning = reasoning if self.return_reasoning else ""
        logprobs = logprobs if self.logprobs else None
        if not (content or reasoning or finish_reason or logprobs or tool_calls):
            return None
        if not self.chat:
            choice = {
                "index": index,
                "text": content,
                "logprobs": self._text_logprobs(logprobs, index) if logprobs else None,
                "finish_reason": finish_reason,
            }
            return self._envelope(True, [choice])
        delta: dict = {}
        if content:
            delta["content"] = content
        if reasoning:
            delta["reasoning_content"] = reasoning
        if tool_calls:
            delta["tool_calls"] = tool_calls
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return self._envelope(True, [choice])

    def usage_chunk(self, info: dict) -> dict:
        return {**self._envelope(True, []), "usage": usage(info)}

    def full(self, choices: list[ChoiceResult], info: dict) -> dict:
        self.precision = info.get("precision") or self.precision
        return {
            **self._envelope(False, [self._choice(i, c) for i, c in enumerate(choices)]),
            "usage": usage(info),
        }

    def _choice(self, index: int, result: ChoiceResult) -> dict:
        if not self.chat:
            logprobs = self._text_logprobs(result.logprobs, index) if self.logprobs else None
            text = self.echo + result.content
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": result.finish_reason}
        message: dict = {"role": "assistant", "content": result.content}
        if result.tool_calls:
            message["tool_calls"] = result.tool_calls
        if self.return_reasoning:
            message["reasoning_content"] = result.reasoning or None
        choice = {"index": index, "message": message, "finish_reason": result.finish_reason}
        choice["logprobs"] = {"content": result.logprobs} if self.logprobs else None
        return choice

    def _text_logprobs(self, entries: list[dict], index: int) -> dict:
        """The legacy completions form: parallel lists, the top alternatives as {token: logprob}."""
        offset = self._offsets.get(index, len(self.echo))
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry["token"])
        self._offsets[index] = offset
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets,
        }
