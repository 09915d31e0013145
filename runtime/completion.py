"""What offline generation returns: each prompt's tokens, text, finish reason and measured speed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class GenerationTimings:
    """Measured speed of one prompt (time.perf_counter around the real engine steps).

    Prompts that run as one batch share each engine call, so each is charged the wall time of the
    calls it took part in: the one prefill call, and the decode steps while it was still generating.
    Rates are per sequence; the sum over a batch's prompts is the batch's throughput.
    """

    load_s: float  # loading the text decoder engine (once per generator)
    batch: int  # prompts that shared the engine calls
    prompt_tokens: int
    prefill_ms: float  # the prefill call (which also yields the first generated token)
    prefill_tokens_per_s: float  # prompt_tokens / prefill time
    generated_tokens: int
    decode_ms: float  # the decode steps that produced tokens 2..generated_tokens
    decode_tokens_per_s: float | None  # (generated_tokens - 1) / decode time; None with one token

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        decode = (
            f"decode {self.generated_tokens - 1} tokens in {self.decode_ms:.1f} ms "
            f"({self.decode_tokens_per_s:.1f} tok/s)"
            if self.decode_tokens_per_s is not None
            else "decode 0 tokens"
        )
        return (
            f"load {self.load_s:.2f} s, prefill {self.prompt_tokens} tokens in {self.prefill_ms:.1f} ms "
            f"({self.prefill_tokens_per_s:.1f} tok/s), {decode}, {self.generated_tokens} generated, "
            f"batch {self.batch}"
        )


class Generated(NamedTuple):
    token_ids: list[int]
    finish_reason: str
    timings: GenerationTimings


@dataclass(frozen=True)
class Completion:
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (a stop token was produced, and is included) or "length"
    timings: GenerationTimings | None = None
