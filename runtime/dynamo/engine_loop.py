"""One thread owns the LLMEngine; asyncio request handlers feed it and receive its token events.

Like the Triton model's service (runtime/server/llm_service.py): callers on any thread `submit` a
Request with a sink and may `abort` it; the loop thread adds queued requests, drops aborted ones
(freeing their KV blocks before the next step), steps the engine, hands each request its token
events, and after every step gives the KV event tracker the requests that step touched.

A sink is called on the loop thread, so it must only hand the item over (e.g. with
`loop.call_soon_threadsafe`). It receives TokenEvents, then nothing more after one with
`finish_reason` set; or one Exception (a request the engine refused or failed), and nothing more.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from runtime.dynamo.kv_events import KvEvents, KvEventTracker
from runtime.errors import RuntimeUserError
from runtime.llm_engine import LLMEngine
from runtime.request import Request, TokenEvent

log = logging.getLogger(__name__)

Sink = Callable[[TokenEvent | Exception], None]


class EngineFailure(RuntimeError):
    """The engine failed while running a request (the worker's log has the traceback)."""


@dataclass(frozen=True)
class LoopStats:
    running: int
    waiting: int
    kv_used_blocks: int
    kv_total_blocks: int
    prefix_hit_rate: float | None  # None: no prompt looked up yet


class EngineLoop:
    def __init__(
        self,
        engine: LLMEngine,
        on_kv_events: Callable[[KvEvents], None] | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_step = on_step  # called on the loop thread after each step; must not block
        self.tracker = KvEventTracker(engine.kv)
        self.on_kv_events = on_kv_events  # called on the loop thread; must not block
        self._inbox: queue.SimpleQueue[tuple[Request, Sink] | str] = queue.SimpleQueue()
        self._live: dict[str, tuple[Request, Sink]] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dynamo-engine-loop", daemon=True)
        self._thread.start()

    # ---- any thread ------------------------------------------------------------------------
    def submit(self, request: Request, sink: Sink) -> None:
        self._inbox.put((request, sink))

    def abort(self, request_id: str) -> None:
        """Drop the request wherever it is; its sink gets nothing more. Unknown ids are fine."""
        self._inbox.put(request_id)

    def stats(self) -> LoopStats:
        kv, sched = self.engine.kv, self.engine.scheduler
        stats = kv.prefix_cache_stats
        total = kv.num_blocks - 1
        return LoopStats(
            running=len(sched.running),  # read from another thread: a snapshot, maybe a step old
            waiting=len(sched.waiting),
            kv_used_blocks=total - kv.num_free_blocks,
            kv_total_blocks=total,
            prefix_hit_rate=stats.hit_rate if stats.queries else None,
        )

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)

    # ---- the loop thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed.is_set():
            touched = self._drain(block=not self.engine.has_work)
            if self.engine.has_work:
                touched += self._step()
            self._publish(touched)
            if self.on_step is not None and touched:
                self.on_step()
        for rid, (_, sink) in list(self._live.items()):
            self.engine.abort(rid)
            sink(EngineFailure("the worker is shutting down"))
        self._live.clear()

    def _drain(self, block: bool) -> list[Request]:
        """Add queued requests and apply aborts; returns the aborted requests (for KV events)."""
        aborted = []
        try:
            item = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
        except queue.Empty:
            return aborted
        while True:
            if isinstance(item, str):
                live = self._live.pop(item, None)
                if live is not None:
                    self.engine.abort(item)
                    aborted.append(live[0])
            else:
                request, sink = item
                try:
                    self.engine.add(request)
                    self._live[request.request_id] = item
                except RuntimeUserError as error:
                    sink(error)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return aborted

    def _step(self) -> list[Request]:
        try:
            events = self.engine.step()
        except Exception:
            log.exception("an engine step failed; failing the %d requests in it", len(self._live))
            failed = list(self._live.values())
            self._live.clear()
            for request, sink in failed:
                self.engine.abort(request.request_id)
                sink(EngineFailure(f"generation of request {request.request_id} failed in the engine"))
            return [request for request, _ in failed]
        touched = {}
        for event in events:
            live = self._live.get(event.request_id)
            if live is None:
                continue
            touched[event.request_id] = live[0]
            live[1](event)
            if event.finish_reason is not None:
                del self._live[event.request_id]
        return list(touched.values())

    def _publish(self, touched: list[Request]) -> None:
        events = self.tracker.update(touched)
        for request in touched:
            if request.request_id not in self._live:
                self.tracker.forget(request.request_id)
        if events and self.on_kv_events is not None:
            try:
                self.on_kv_events(events)
            except Exception:  # routing hints only: serving goes on without them
                log.exception("publishing KV events failed")
