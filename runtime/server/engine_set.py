"""The LLM engines of one model, one per precision in use: the configured one loaded at start,
others on the first request that asks for them (a power policy switching precision), and those
left idle unloaded.

A request runs to its end on the engine it was admitted to, so switching precision never moves,
drops or mixes a request: new requests go to the new engine while running ones finish on theirs.
Engines are loaded on the caller's thread (a request's own submit), never on the loop thread, so
loading one does not stall the others' decoding. Only the loop thread steps, adds and unloads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from runtime.errors import RuntimeUserError
from runtime.llm_engine import COMPONENT, LLMEngine
from runtime.request import Request, TokenEvent

log = logging.getLogger(__name__)

IDLE_UNLOAD_S = 60.0  # an engine neither current nor busy for this long is unloaded


@dataclass(frozen=True)
class EngineOptions:
    threads: int = 0
    kv_blocks: int | None = None
    max_batch: int | None = None
    devices: tuple[int, ...] = ()  # CUDA device per pipeline stage; (): the first


@dataclass(frozen=True)
class PoolStats:
    """Summed over the loaded engines (each has its own KV pool)."""

    running: int
    waiting: int
    kv_usage: float
    prefix_queries: int
    prefix_hits: int
    kv_blocks_free: int
    kv_blocks_used: int
    kv_blocks_total: int  # allocatable blocks (the null blocks excluded)


class EngineSet:
    def __init__(self, engines_dir, precision: str, options: EngineOptions) -> None:
        self.engines_dir, self.options = engines_dir, options
        self.default = self._load(precision)
        self.engines: dict[str, LLMEngine] = {self.default.precision: self.default}
        self.built = self.default.manifest.precisions(COMPONENT)
        self.current = self.default.precision  # the precision of the latest admitted request
        self._owner: dict[str, LLMEngine] = {}  # request id -> the engine it runs on
        self._idle_since: dict[str, float] = {}
        self._load_lock = threading.Lock()

    def _load(self, precision: str) -> LLMEngine:
        o = self.options
        return LLMEngine(
            self.engines_dir,
            precision,
            o.threads,
            kv_blocks=o.kv_blocks,
            max_batch=o.max_batch,
            prefix_caching=True,
            devices=o.devices,
        )

    # ---- caller threads ------------------------------------------------------------------
    def engine(self, precision: str | None) -> LLMEngine:
        """The engine of `precision` (None: the configured one), loaded now if it is not."""
        if precision is None:
            return self.default
        if precision not in self.built:
            raise RuntimeUserError(
                f"precision {precision!r} is not built for these engines (built: {', '.join(self.built)})"
            )
        with self._load_lock:
            engine = self.engines.get(precision)
            if engine is None:
                log.info("loading the %s engine", precision)
                engine = self._load(precision)
                self.engines = {**self.engines, precision: engine}  # replaced whole: readers never lock
            return engine

    # ---- the loop thread -----------------------------------------------------------------
    def add(self, request: Request, engine: LLMEngine) -> None:
        engine.add(request)
        self._owner[request.request_id] = engine
        self.current = engine.precision

    def abort(self, request_id: str) -> bool:
        engine = self._owner.pop(request_id, None)
        return engine is not None and engine.abort(request_id)

    @property
    def has_work(self) -> bool:
        return any(engine.has_work for engine in self.engines.values())

    def step(self) -> tuple[list[TokenEvent], list[str]]:
        """One step of every engine with work: (token events, ids of requests whose engine
        failed). A failing engine is logged and its running requests given up; the others go on."""
        events, failed = [], []
        for engine in list(self.engines.values()):
            if not engine.has_work:
                continue
            try:
                events += engine.step()
            except Exception:
                running = [r.request_id for r in engine.scheduler.running]
                log.exception("the %s engine's step failed; failing requests %s", engine.precision, running)
                failed += running
        for event in events:
            if event.finish_reason is not None:
                self._owner.pop(event.request_id, None)
        self._unload_idle()
        return events, failed

    def _unload_idle(self) -> None:
        now = time.monotonic()
        for precision, engine in list(self.engines.items()):
            if engine.has_work or precision in (self.current, self.default.precision):
                self._idle_since.pop(precision, None)
                continue
            since = self._idle_since.setdefault(precision, now)
            if now - since >= IDLE_UNLOAD_S:
                with self._load_lock:
                    self.engines = {p: e for p, e in self.engines.items() if p != precision}
                self._idle_since.pop(precision, None)
                log.info("unloaded the idle %s engine", precision)

    def stats(self) -> PoolStats:
        running = waiting = queries = hits = free = used = total = 0
        for engine in self.engines.values():
            s = engine.scheduler.stats()
            running, waiting = running + s.running, waiting + s.waiting
            queries, hits = queries + s.prefix_queries, hits + s.prefix_hits
            blocks = engine.kv.pool.blocks[1:]  # block 0 is the null block
            free += engine.kv.num_free_blocks
            used += sum(1 for block in blocks if block.ref_cnt > 0)
            total += len(blocks)
        return PoolStats(running, waiting, used / total if total else 0.0, queries, hits, free, used, total)
