"""The LLM behind the `llm` Triton model: a loop thread driving one LLMEngine, streaming deltas to
response sinks.

Threads: `submit` runs on the caller's thread (Triton's `execute`): it measures the prompt in
characters (refusing what cannot fit before any work), renders and tokenizes it, then hands the
request to the loop thread, which owns the engine (scheduler, decoder, KV pool) and its
detokenizing tokenizer. The two sides use separate tokenizer instances, so a long tokenization
never holds anything the decode loop needs (Hugging Face's encode releases the GIL). Before
each step the loop drops the requests that a cancel op names (what the gateway sends when its
client leaves) or that Triton marks cancelled (a direct gRPC client that cancels), so their
slots and blocks are free for that step.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from runtime.constraints import GrammarCompiler
from runtime.errors import RuntimeUserError
from runtime.llm_engine import LLMEngine
from runtime.logprobs import TokenLogprobs
from runtime.manifest import Manifest
from runtime.reasoning import ThinkTokens
from runtime.request import Request
from runtime.request_output import OutputDelta, RequestOutput
from runtime.sampling import SamplingParams
from runtime.server.engine_set import EngineOptions, EngineSet, PoolStats
from runtime.server.prompting import PromptFactory, PromptLimits, longest_token_chars
from runtime.server.wire import (
    ERROR_SERVER,
    ERROR_USER,
    FINISH_CANCELLED,
    OP_CANCEL,
    GenerateRequest,
    WireError,
)
from runtime.tokenizer import TextTokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    engines_dir: Path
    precision: str = "auto"  # fp32 | fp16 | int8 | int4 | auto (int4 > int8 > fp16 > fp32)
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = all cores
    kv_blocks: int | None = None  # None: room for max_batch sequences of max_seq_len
    max_batch: int | None = None  # None: the batch the engines were built for
    devices: tuple[int, ...] = ()  # CUDA device per pipeline stage (runtime/stages.py); (): the first


def instance_devices(
    engines_dir: Path, devices: str, instance_kind: str, instance_device: int
) -> tuple[int, ...]:
    """The CUDA devices of an llm instance's decoder: `devices` ("0,1", serve --devices) when
    given; else, for a single-graph decoder in a KIND_GPU instance (replicas on GPUs), the GPU
    Triton gave the instance; else () (the first device, or the CPU)."""
    if devices:
        return tuple(int(device) for device in devices.split(","))
    if instance_kind == "GPU" and not Manifest.load(engines_dir).stages:
        return (instance_device,)
    return ()


class ResponseSink(Protocol):
    """Where one request's output goes (a Triton response sender, or a queue in tests)."""

    def send(self, delta: OutputDelta, info: dict) -> None:
        """One delta; the last one has `finish_reason` set and `info` holds the usage."""

    def fail(self, message: str) -> None:
        """End the request with an error (message starts with ERROR_USER or ERROR_SERVER)."""

    def is_cancelled(self) -> bool: ...

    def close(self) -> None:
        """End a cancelled request without further output (Triton still needs its FINAL flag)."""


@dataclass(frozen=True)
class ServiceStats(PoolStats):
    """The engines' schedulers and KV pools (free + used == total when the pools are consistent)
    and how many requests the service holds."""

    live: int = 0  # requests queued or running, as the service tracks them


@dataclass
class _Live:
    request: Request
    output: RequestOutput
    sink: ResponseSink
    engine: LLMEngine  # the precision it runs at, start to end


class LLMService:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        options = EngineOptions(config.threads, config.kv_blocks, config.max_batch, config.devices)
        self.engines = EngineSet(config.engines_dir, config.precision, options)
        self.engine = self.engines.default  # the configured precision's; others load on request
        self.precision, self.limits = self.engine.precision, self.engine.limits
        self.tokenizer = self.engine.tokenizer  # the loop thread's: detokenization
        self.think = ThinkTokens.from_tokenizer(self.tokenizer.hf)
        # The callers' own instance: a tokenizer is not shared across threads (its Rust object
        # is borrowed mutably on encode), and sharing one under a lock stalled decoding.
        tokenizer_dir = self.engine.tokenizer_dir
        self.prompts = PromptFactory(config.engines_dir, self.engine.manifest, TextTokenizer(tokenizer_dir))
        token_chars = longest_token_chars(tokenizer_dir) or max(map(len, self.tokenizer.hf.get_vocab()))
        self.prompt_limits = PromptLimits(self.limits.max_seq_len, token_chars)
        self.kv, self.scheduler = self.engine.kv, self.engine.scheduler
        self._prepare_lock = threading.Lock()  # callers take turns on their tokenizer
        self._grammar_lock = threading.Lock()
        self._grammar_compiler: GrammarCompiler | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # _Live, or a request id to drop
        self._live: dict[str, _Live] = {}
        self._ids = itertools.count()
        self._stats = self._snapshot()
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
        """Queue a request; its output goes to `sink`. User errors go to `sink.fail`; other failures
        are logged under the request id, and the sink gets only that id. A cancel op queues the
        cancellation behind the request it names (same caller, so that request is queued already)."""
        if wire.op == OP_CANCEL:
            self._inbox.put(wire.request_id)
            sink.send(OutputDelta(finish_reason=FINISH_CANCELLED), {})
            return
        rid = wire.request_id or f"req-{next(self._ids)}"
        try:
            wire.validate()
            self.prompt_limits.check(wire.text_chars(), len(wire.messages or ()))
            engine = self.engines.engine(wire.precision)
            with self._prepare_lock:
                prompt = self.prompts.prepare(wire, list(images), list(audios), encoders)
            params = self._sampling(wire)
            constraint = self._grammars().compile(wire.grammar, rid) if wire.grammar else None
        except (RuntimeUserError, WireError) as error:
            if error.__cause__ is not None:  # a library's detail, kept out of the client's message
                log.warning("request %s: %s (%r)", rid, error, error.__cause__)
            sink.fail(ERROR_USER + str(error))
            return
        except Exception:
            log.exception("request %s: preparing the prompt failed", rid)
            sink.fail(f"{ERROR_SERVER}preparing the prompt of request {rid} failed")
            return
        request = Request(rid, prompt, params, logprobs=wire.logprobs, constraint=constraint)
        output = RequestOutput(
            self.tokenizer.hf,
            prompt.token_ids,
            stop=tuple(wire.stop),
            stop_token_ids=params.stop_token_ids,
            think=self.think if wire.messages is not None else None,
        )
        self._inbox.put(_Live(request, output, sink, engine))

    def _grammars(self) -> GrammarCompiler:
        """Made on the first constrained request (it reads the whole vocabulary once)."""
        with self._grammar_lock:
            if self._grammar_compiler is None:
                self._grammar_compiler = GrammarCompiler(
                    TextTokenizer(self.engine.tokenizer_dir).hf,
                    self.limits.vocab_size,
                    self.tokenizer.stop_token_ids,
                )
            return self._grammar_compiler

    def _sampling(self, wire: GenerateRequest) -> SamplingParams:
        try:  # SamplingParams names the bad value and its range
            return SamplingParams(
                temperature=float(wire.temperature),
                top_p=float(wire.top_p),
                top_k=wire.top_k,
                seed=wire.seed,
                presence_penalty=float(wire.presence_penalty),
                frequency_penalty=float(wire.frequency_penalty),
                max_tokens=wire.max_tokens or self.limits.max_seq_len,
                stop_token_ids=self.tokenizer.stop_token_ids,
            )
        except ValueError as error:
            raise RuntimeUserError(str(error)) from None

    def stats(self) -> ServiceStats:
        """The snapshot taken after the scheduler's latest iteration."""
        return self._stats

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)

    # ---- the loop thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closed.is_set():
            self._drain_inbox(block=not self.engines.has_work)
            self._reap_cancelled()
            # Before the step too, so a request in a long prefill shows (as waiting, live).
            self._stats = self._snapshot()
            if self.engines.has_work:
                self._step()
                self._stats = self._snapshot()  # what the last tokens sent leave behind
        for rid in list(self._live):
            self._end(rid, error=ERROR_SERVER + "the server is shutting down")

    def _snapshot(self) -> ServiceStats:
        return ServiceStats(**self.engines.stats().__dict__, live=len(self._live))

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, str):  # a cancel op's target id
                self._drop(item)
            else:
                try:
                    self.engines.add(item.request, item.engine)
                    self._live[item.request.request_id] = item
                except RuntimeUserError as error:
                    item.sink.fail(ERROR_USER + str(error))
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _reap_cancelled(self) -> None:  # cancelled through Triton (a direct gRPC client)
        for rid, live in list(self._live.items()):
            if live.sink.is_cancelled():
                self._drop(rid)

    def _drop(self, rid: str) -> None:
        """Abort a request wherever it is (frees its blocks now) and end its stream; a request
        that has already finished is not there any more, and that is fine."""
        live = self._live.pop(rid, None)
        if live is not None:
            self.engines.abort(rid)
            live.sink.close()

    def _step(self) -> None:
        events, failed = self.engines.step()  # an engine failure must not stop the server
        for rid in failed:
            self._end(rid, error=f"{ERROR_SERVER}generation of request {rid} failed")
        deltas = [
            (event, self._live[event.request_id].output.push(event.token_id, event.finish_reason))
            for event in events
            if event.request_id in self._live
        ]
        for event, delta in deltas:
            rid = event.request_id
            live = self._live[rid]
            info = {}
            if event.logprobs and event.token_id not in live.request.params.stop_token_ids:
                info["logprobs"] = [self._logprob_entry(event.logprobs)]  # stop tokens are not text
            if delta.finish_reason is None:
                self._send(rid, live, delta, info)
                continue
            request = live.request
            self.engines.abort(rid)  # no-op unless a stop string ended it early
            info |= {
                "prompt_tokens": request.num_prompt,
                "completion_tokens": len(request.output_ids),
                "cached_tokens": request.num_cached_prompt,
                "precision": live.engine.precision,
            }
            del self._live[rid]
            self._send(rid, live, delta, info)

    def _token(self, token_id: int, logprob: float) -> dict:
        text = self.tokenizer.hf.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "surrogatepass"))}

    def _logprob_entry(self, scores: TokenLogprobs) -> dict:
        """OpenAI's chat form: the token, its logprob and bytes, and the top alternatives."""
        top = [self._token(token_id, logprob) for token_id, logprob in scores.top]
        return {**self._token(scores.token_id, scores.logprob), "top_logprobs": top}

    def _send(self, rid: str, live: _Live, delta: OutputDelta, info: dict) -> None:
        try:
            live.sink.send(delta, info)
        except Exception:  # the client's side is gone (e.g. the response sender closed): drop it
            log.exception("could not send to request %s; dropping it", rid)
            self.engines.abort(rid)
            self._live.pop(rid, None)

    def _end(self, rid: str, error: str) -> None:
        self.engines.abort(rid)
        live = self._live.pop(rid, None)
        if live is not None:
            live.sink.fail(error)
