"""One generation request as the scheduler tracks it, and the events a scheduler step yields."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from runtime.logprobs import TokenLogprobs
from runtime.prompt import PreparedPrompt
from runtime.sampling import SamplingParams, make_generator


class TokenConstraint(Protocol):
    """Which tokens may come next (runtime/constraints.py: a grammar matcher per request)."""

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits [V] of every token the grammar forbids now to -inf, in place."""

    def accept(self, token_id: int) -> None:
        """Advance past a sampled token (one the mask allowed)."""

    @property
    def finished(self) -> bool:
        """The output is complete: only a stop token may follow."""


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued; holds no KV blocks
    RUNNING = "running"  # holds its blocks; prefilled, decoding one token per step
    FINISHED = "finished"  # blocks freed


@dataclass(eq=False)
class Request:
    """Mutable state of one sequence. Only the scheduler's thread changes it.

    `num_computed` counts tokens whose K/V are in the pool (prompt first, then generated ones);
    the last generated token is not yet computed: it is the next decode step's input.
    """

    request_id: str
    prompt: PreparedPrompt
    params: SamplingParams
    generator: np.random.Generator | None = None
    output_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed: int = 0
    num_cached_prompt: int = 0  # prompt tokens served by the prefix cache at admission
    finish_reason: str | None = None
    arrival: float = field(default_factory=time.monotonic)
    logprobs: int | None = None  # None: off; n: the sampled token's logprob and the n most likely
    constraint: TokenConstraint | None = None  # a grammar the output must follow

    def __post_init__(self) -> None:
        if self.generator is None and not self.params.greedy:
            self.generator = make_generator(self.params.seed)

    @property
    def num_prompt(self) -> int:
        return len(self.prompt)

    @property
    def max_total(self) -> int:
        """Prompt + the most tokens it may generate (the KV slots reserved at admission)."""
        return self.num_prompt + self.params.max_tokens

    @property
    def block_salt(self) -> tuple:
        """Salts the prefix-cache hashes: identical placeholder ids for different images differ."""
        return self.prompt.media_hashes

    def all_token_ids(self) -> list[int]:
        return [*self.prompt.token_ids, *self.output_ids]


class TokenEvent(NamedTuple):
    """One sampled token of one request; `finish_reason` is set on its last token."""

    request_id: str
    token_id: int
    finish_reason: str | None  # None, "stop" (a stop token, included here) or "length"
    logprobs: TokenLogprobs | None = None  # when the request asks for them


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot for metrics."""

    running: int
    waiting: int
    kv_usage: float  # fraction of allocatable blocks in use
    prefix_queries: int  # prompt tokens looked up in the prefix cache
    prefix_hits: int  # of those, tokens served from cached blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0
