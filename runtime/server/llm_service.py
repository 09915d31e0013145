"""The LLM behind the `llm` Triton model: a scheduler thread streaming deltas to response sinks.

Threads: `submit` runs on the caller's thread (Triton's `execute`): it parses and tokenizes, then
hands the request to the loop thread, which owns the scheduler, the decoder and the KV pool. The
loop polls every live request's sink for cancellation before each step, so a cancelled request's
blocks are freed within one step. The tokenizer is shared under a lock (Hugging Face tokenizers
are not documented as thread-safe).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from builder.manifest import Manifest
from runtime.engine_loader import load_engine
from runtime.errors import RuntimeUserError
from runtime.generate import COMPONENT, choose_precision
from runtime.kv import KVCacheManager
from runtime.paged_decoder import DecoderLimits, PagedTextDecoder
from runtime.reasoning import ThinkTokens
from runtime.request import Request, SchedulerStats
from runtime.request_output import OutputDelta, RequestOutput
from runtime.sampling import SamplingParams
from runtime.scheduler import Scheduler, SchedulerConfig
from runtime.server.prompting import PromptFactory
from runtime.server.wire import ERROR_SERVER, ERROR_USER, GenerateRequest
from runtime.tokenizer import TextTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    engines_dir: Path
    precision: str = "auto"  # fp32 | fp16 | int8 | int4 | auto (int4 > int8 > fp16 > fp32)
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = all cores
    kv_blocks: int | None = None  # None: room for max_batch sequences of max_seq_len
    max_batch: int = 8


class ResponseSink(Protocol):
    """Where one request's output goes (a Triton response sender, or a queue in tests)."""

    def send(self, delta: OutputDelta, info: dict) -> None:
        """One delta; the last one has `finish_reason` set and `info` holds the usage."""

    def fail(self, message: str) -> None:
        """End the request with an error (message starts with ERROR_USER or ERROR_SERVER)."""

    def is_cancelled(self) -> bool: ...

    def close(self) -> None:
        """End a cancelled request without further output (Triton still needs its FINAL flag)."""


@dataclass
class _Live:
    request: Request
    output: RequestOutput
    sink: ResponseSink


class LLMService:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        manifest = Manifest.load(config.engines_dir)
        self.precision = choose_precision(manifest, config.precision)
        self.limits = DecoderLimits.from_manifest(manifest.decoder)
        engine = load_engine(manifest, config.engines_dir, COMPONENT, self.precision, threads=config.threads)
        self.tokenizer = TextTokenizer(config.engines_dir / manifest.tokenizer_dir)
        self.think = ThinkTokens.from_tokenizer(self.tokenizer.hf)
        self.prompts = PromptFactory(config.engines_dir, manifest, self.tokenizer)
        blocks_per_seq = -(-self.limits.max_seq_len // self.limits.block_size)
        kv_blocks = config.kv_blocks or 1 + config.max_batch * blocks_per_seq
        self.kv = KVCacheManager(kv_blocks, self.limits.block_size, enable_prefix_caching=True)
        decoder = PagedTextDecoder(engine, self.limits, self.kv)
        self.scheduler = Scheduler(decoder, SchedulerConfig(config.max_batch, self.limits.max_seq_len))
        self._tokenizer_lock = threading.Lock()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._live: dict[str, _Live] = {}
        self._ids = itertools.count()
        self._stats = self.scheduler.stats()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llm-scheduler", daemon=True)
        self._thread.start()

    # ---- caller side ---------------------------------------------------------------------
    def submit(
        self,
        wire: GenerateRequest,
        sink: ResponseSink,
        images: list[bytes] = (),
        audios: list[bytes] = (),
        encoders=None,
    ) -> None:
        """Queue a request; its output goes to `sink`. User errors go to `sink.fail`."""
        try:
            with self._tokenizer_lock:
                prompt = self.prompts.prepare(wire, list(images), list(audios), encoders)
            params = SamplingParams(
                temperature=float(wire.temperature),
                top_p=float(wire.top_p),
                top_k=wire.top_k,
                seed=wire.seed,
                max_tokens=wire.max_tokens or self.limits.max_seq_len,
                stop_token_ids=self.tokenizer.stop_token_ids,
            )
        except (RuntimeUserError, ValueError) as error:
            sink.fail(ERROR_USER + str(error))
            return
        request = Request(f"req-{next(self._ids)}", prompt, params)
        output = RequestOutput(
            self.tokenizer.hf,
            prompt.token_ids,
            stop=tuple(wire.stop),
            stop_token_ids=params.stop_token_ids,
            think=self.think if wire.messages is not None else None,
        )
        self._inbox.put(_Live(request, output, sink))

    def stats(self) -> SchedulerStats:
        """The snapshot taken after the scheduler's latest iteration."""
        return self._stats

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)

    # ---- the loop thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed.is_set():
            self._drain_inbox(block=not self.scheduler.has_work)
            self._reap_cancelled()
            if self.scheduler.has_work:
                self._step()
            self._stats = self.scheduler.stats()
        for rid in list(self._live):
            self._end(rid, error=ERROR_SERVER + "the server is shutting down")

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            try:
                self.scheduler.add(item.request)
                self._live[item.request.request_id] = item
            except RuntimeUserError as error:
                item.sink.fail(ERROR_USER + str(error))
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _reap_cancelled(self) -> None:
        for rid, live in list(self._live.items()):
            if live.sink.is_cancelled():
                self.scheduler.abort(rid)  # frees its blocks now
                del self._live[rid]
                live.sink.close()

    def _step(self) -> None:
        try:
            events = self.scheduler.step()
        except Exception as error:  # an engine failure must not stop the server: fail what ran
            log.exception("scheduler step failed")
            for rid in [r.request_id for r in self.scheduler.running]:
                self._end(rid, error=f"{ERROR_SERVER}generation failed: {error}")
            return
        with self._tokenizer_lock:
            deltas = [
                (
                    event.request_id,
                    self._live[event.request_id].output.push(event.token_id, event.finish_reason),
                )
                for event in events
                if event.request_id in self._live
            ]
        for rid, delta in deltas:
            live = self._live[rid]
            if delta.finish_reason is None:
                self._send(rid, live, delta, {})
                continue
            request = live.request
            self.scheduler.abort(rid)  # no-op unless a stop string ended it early
            usage = {
                "prompt_tokens": request.num_prompt,
                "completion_tokens": len(request.output_ids),
                "cached_tokens": request.num_cached_prompt,
            }
            del self._live[rid]
            self._send(rid, live, delta, usage)

    def _send(self, rid: str, live: _Live, delta: OutputDelta, info: dict) -> None:
        try:
            live.sink.send(delta, info)
        except Exception:  # the client's side is gone (e.g. the response sender closed): drop it
            log.exception("could not send to request %s; dropping it", rid)
            self.scheduler.abort(rid)
            self._live.pop(rid, None)

    def _end(self, rid: str, error: str) -> None:
        self.scheduler.abort(rid)
        live = self._live.pop(rid, None)
        if live is not None:
            live.sink.fail(error)
