"""Route generated tokens to the reasoning or the answer by the `<think>`/`</think>` token ids.

Splitting must happen on ids, not text: the markers are special tokens that vanish when the text
is decoded with `skip_special_tokens`. The markers themselves go to neither part.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"

REASONING = "reasoning"
CONTENT = "content"


@dataclass(frozen=True)
class ThinkTokens:
    start: int
    end: int

    @classmethod
    def from_tokenizer(cls, hf_tokenizer) -> ThinkTokens | None:
        """The marker ids when both are single tokens of this vocabulary, else None (no split)."""
        added = hf_tokenizer.get_added_vocab()
        if THINK_START in added and THINK_END in added:
            return cls(added[THINK_START], added[THINK_END])
        return None


class ReasoningSplitter:
    """Per request. Starts in the answer unless the prompt itself opened a `<think>` block."""

    def __init__(self, tokens: ThinkTokens, prompt_ids: list[int]) -> None:
        self.tokens = tokens
        opened = max((i for i, t in enumerate(prompt_ids) if t == tokens.start), default=-1)
        closed = max((i for i, t in enumerate(prompt_ids) if t == tokens.end), default=-1)
        self.in_reasoning = opened > closed

    def route(self, token_id: int) -> str | None:
        """REASONING, CONTENT, or None for a marker."""
        if token_id == self.tokens.start:
            self.in_reasoning = True
            return None
        if token_id == self.tokens.end:
            self.in_reasoning = False
            return None
        return REASONING if self.in_reasoning else CONTENT
