"""Turn one request's sampled tokens into text deltas: reasoning vs answer, stop strings, UTF-8.

Pure Python over a Hugging Face tokenizer; the LLM service keeps one `RequestOutput` per live
request and sends each `OutputDelta` to the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.detokenizer import IncrementalDetokenizer
from runtime.reasoning import CONTENT, REASONING, ReasoningSplitter, ThinkTokens


@dataclass
class OutputDelta:
    content: str = ""
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length" or None while generating


class RequestOutput:
    """Stop strings end the answer ("stop"); the text is cut before them, and up to the longest
    stop string's length minus one characters are held back while streaming so a stop string
    split over tokens is never half-sent. Stop token ids are not rendered."""

    def __init__(
        self,
        tokenizer,
        prompt_ids: list[int],
        stop: tuple[str, ...] = (),
        stop_token_ids: tuple[int, ...] = (),
        think: ThinkTokens | None = None,
    ) -> None:
        self.splitter = ReasoningSplitter(think, prompt_ids) if think else None
        self.detok = {
            CONTENT: IncrementalDetokenizer(tokenizer),
            REASONING: IncrementalDetokenizer(tokenizer),
        }
        self.stop = tuple(s for s in stop if s)
        self.stop_token_ids = set(stop_token_ids)
        self._held = ""  # answer text not yet sent (a possible stop-string prefix)
        self.finished = False

    def push(self, token_id: int, finish_reason: str | None) -> OutputDelta:
        delta = OutputDelta(token_ids=[token_id])
        if token_id not in self.stop_token_ids:
            channel = self.splitter.route(token_id) if self.splitter else CONTENT
            if channel == REASONING:
                delta.reasoning = self.detok[REASONING].push(token_id)
            elif channel == CONTENT:
                self._held += self.detok[CONTENT].push(token_id)
        if finish_reason is not None:
            delta.reasoning += self.detok[REASONING].flush()
            self._held += self.detok[CONTENT].flush()
        hit = self._find_stop()
        if hit is not None:
            delta.content, self._held = self._held[:hit], ""
            delta.finish_reason = "stop"
        elif finish_reason is not None:
            delta.content, self._held = self._held, ""
            delta.finish_reason = finish_reason
        else:
            keep = max((len(s) for s in self.stop), default=1) - 1
            cut = len(self._held) - keep
            if cut > 0:
                delta.content, self._held = self._held[:cut], self._held[cut:]
        self.finished = delta.finish_reason is not None
        return delta

    def _find_stop(self) -> int | None:
        found = [i for i in (self._held.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None
