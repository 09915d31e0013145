"""In-flight batching: admit queued requests between decode steps, decode up to max_batch at once.

One `step()` is: drop nothing, admit from the FIFO queue while a running slot and KV blocks are
free (prefill them in one engine call, sampling each one's first token), then one decode call
over every request that was already running. A request reserves the KV slots for its prompt plus
`max_tokens` when it is admitted, so running requests never run out of blocks and are never
preempted; a request that does not fit waits at the head of the queue until blocks are freed.
Prefix caching: admission attaches cached blocks of earlier requests with the same leading tokens
(salted with the prompt's media hashes), so only the rest of the prompt is prefilled.

Not thread-safe: one thread owns the scheduler (see runtime/server/llm_service.py).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from runtime.errors import PromptTooLongError, RuntimeUserError
from runtime.kv import KVCacheManager
from runtime.logprobs import token_logprobs
from runtime.paged_decoder import PagedTextDecoder
from runtime.request import Request, RequestStatus, SchedulerStats, TokenEvent
from runtime.sampling import Sampler, apply_penalties


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 8  # running sequences per decode step (the engines' batch limit)
    max_seq_len: int = 2048  # prompt + completion, as the engines were built
    # Padded tokens (batch x longest new prompt part) one prefill call may cover; the first
    # admitted request is always taken, so long prompts still run, alone.
    max_prefill_tokens: int = 4096


class Scheduler:
    def __init__(self, decoder: PagedTextDecoder, config: SchedulerConfig, sampler: Sampler | None = None):
        if config.max_batch > decoder.limits.max_batch:
            raise ValueError(
                f"SchedulerConfig.max_batch={config.max_batch} exceeds the engines' batch limit "
                f"{decoder.limits.max_batch}"
            )
        self.decoder = decoder
        self.kv: KVCacheManager = decoder.kv
        self.config = config
        self.sampler = sampler or Sampler()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self._requests: dict[str, Request] = {}
        # Counted once per admitted request (the manager also counts lookups retried while waiting).
        self._prefix_queries = 0
        self._prefix_hits = 0

    # ---- requests in and out -------------------------------------------------------------
    def add(self, request: Request) -> None:
        """Queue a request. Caps `max_tokens` to what the engines allow after the prompt.

        Raises RuntimeUserError for a prompt that can never run (empty, too long for the
        engines, or needing more KV blocks than the whole pool has)."""
        n, limit = request.num_prompt, self.config.max_seq_len
        if request.request_id in self._requests:
            raise RuntimeUserError(f"request id {request.request_id!r} is already in use; use a unique id")
        if n == 0:
            raise RuntimeUserError("the prompt is empty after tokenization; give some text")
        if n >= limit:
            raise PromptTooLongError(
                f"the prompt has {n} tokens but the engines were built for at most {limit} "
                f"(prompt + completion); shorten the prompt or rebuild with a larger --max-seq-len"
            )
        if request.max_total > limit:
            request.params = replace(request.params, max_tokens=limit - n)
        need = -(-request.max_total // self.kv.block_size)
        if need > self.kv.num_blocks - 1:
            raise RuntimeUserError(
                f"prompt + max_tokens = {request.max_total} tokens needs {need} KV blocks but the pool "
                f"has {self.kv.num_blocks - 1}; lower max_tokens or start the server with more KV blocks"
            )
        request.status = RequestStatus.WAITING
        self.waiting.append(request)
        self._requests[request.request_id] = request

    def abort(self, request_id: str) -> bool:
        """Remove a request wherever it is and free its blocks now. False if unknown/finished."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        if request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        else:
            self.running.remove(request)
        self.kv.free(request_id)
        request.status = RequestStatus.FINISHED
        request.finish_reason = request.finish_reason or "abort"
        return True

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            len(self.running), len(self.waiting), self.kv.usage, self._prefix_queries, self._prefix_hits
        )

    # ---- one iteration -------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        """Prefill what can be admitted, then decode the rest; one event per sampled token."""
        decoding = list(self.running)
        admitted = self._admit()
        events = self._prefill(admitted) if admitted else []
        if decoding:
            events += self._decode(decoding)
        return events

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        longest = 0
        while self.waiting and len(self.running) < self.config.max_batch:
            request = self.waiting[0]
            rid = request.request_id
            cached = self.kv.get_computed_blocks(rid, request.prompt.token_ids, request.block_salt)
            longest_if = max(longest, request.num_prompt - cached)
            if admitted and longest_if * (len(admitted) + 1) > self.config.max_prefill_tokens:
                self.kv.free(rid)
                break
            if self.kv.allocate_slots(rid, request.max_total) is None:
                self.kv.free(rid)  # the pool is full: wait at the head of the queue, keep FIFO order
                break
            self.waiting.popleft()
            request.num_cached_prompt = request.num_computed = cached
            self._prefix_queries += request.num_prompt
            self._prefix_hits += cached
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            admitted.append(request)
            longest = longest_if
        return admitted

    def _prefill(self, batch: list[Request]) -> list[TokenEvent]:
        steps = [r.prompt.prefill_input(r.request_id, r.num_computed) for r in batch]
        logits = self.decoder.step(steps)  # [B, V] at each prompt's last token
        for request in batch:
            request.num_computed = request.num_prompt
            self.kv.cache_blocks(request.request_id, request.prompt.token_ids, request.block_salt)
        return self._sample(batch, logits)

    def _decode(self, batch: list[Request]) -> list[TokenEvent]:
        # The slots were reserved at admission (prompt + max_tokens), so no allocation here.
        steps = [r.prompt.decode_input(r.request_id, r.output_ids[-1], r.num_computed) for r in batch]
        logits = self.decoder.step(steps)
        bs = self.kv.block_size
        for r in batch:
            r.num_computed += 1
            if r.num_computed % bs == 0:  # a block just filled: publish it for later turns
                self.kv.cache_blocks(r.request_id, r.all_token_ids()[: r.num_computed], r.block_salt)
        return self._sample(batch, logits)

    def _sample(self, batch: list[Request], logits: np.ndarray) -> list[TokenEvent]:
        # Logprobs come from the raw logits; grammar masks apply to what is sampled.
        raw = {i: logits[i].copy() for i, r in enumerate(batch) if r.logprobs is not None}
        for i, request in enumerate(batch):
            apply_penalties(logits[i], request.output_ids, request.params)
            if request.constraint is not None:
                request.constraint.mask(logits[i])
        tokens = self.sampler.sample(logits, [r.params for r in batch], [r.generator for r in batch])
        events = []
        for i, (request, token) in enumerate(zip(batch, tokens.tolist(), strict=True)):
            request.output_ids.append(token)
            if request.constraint is not None and token not in request.params.stop_token_ids:
                request.constraint.accept(token)
            reason = self._finish_reason(request, token)
            if reason is not None:
                request.finish_reason = reason
                self._finish(request)
            scores = token_logprobs(raw[i], token, request.logprobs) if i in raw else None
            events.append(TokenEvent(request.request_id, token, reason, scores))
        return events

    def _finish_reason(self, request: Request, token: int) -> str | None:
        if token in request.params.stop_token_ids:
            return "stop"
        if request.constraint is not None and request.constraint.finished:
            return "stop"  # the grammar is complete: its answer is whole
        total = request.num_prompt + len(request.output_ids)
        if len(request.output_ids) >= request.params.max_tokens or total >= self.config.max_seq_len:
            return "length"
        return None

    def _finish(self, request: Request) -> None:
        self.running.remove(request)
        del self._requests[request.request_id]
        self.kv.free(request.request_id)
        request.status = RequestStatus.FINISHED
