"""A Dynamo backend worker around our LLMEngine: `python -m runtime.dynamo.worker --engines DIR`.

Dynamo's frontend tokenises (with the tokenizer and chat template kept beside the engines), routes
and detokenises; this worker registers the model with Dynamo's Python runtime, takes token-id
requests, streams token ids back, aborts a request in the engine when Dynamo cancels it (client
gone, or stop), and publishes KV-cache events (block hashes of `block_size` tokens, see
runtime/dynamo/kv_events.py) so the frontend's KV-aware router sends a conversation's next turn
to the worker holding its blocks.

Threads: Dynamo calls `generate` concurrently on its asyncio loop; one EngineLoop thread owns the
engine. Each request gets an asyncio queue; the loop thread puts its token events on it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from dynamo._core import Context
from dynamo.common.backend import EngineConfig, LLMEngine, LlmRegistration, WorkerConfig
from dynamo.common.backend.publisher import ComponentSnapshot, KvEventSource, PushSource
from dynamo.common.backend.run import run
from dynamo.common.utils.token_ids import normalize_request_token_ids
from dynamo.llm.exceptions import EngineShutdown, InvalidArgument, Unknown

from runtime.dynamo.engine_loop import EngineFailure, EngineLoop
from runtime.dynamo.kv_events import KvEvents, signed64
from runtime.errors import RuntimeUserError
from runtime.llm_engine import LLMEngine as OurEngine
from runtime.prompt import PreparedPrompt
from runtime.request import Request
from runtime.sampling import SamplingParams

log = logging.getLogger("autoglm.dynamo.worker")

NAMESPACE = "autoglm"
COMPONENT = "backend"
SNAPSHOT_EVERY_S = 0.05


class AutoglmEngine(LLMEngine):
    """Dynamo's engine contract (from_args, start, generate, abort, cleanup) over our engine."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.engine: OurEngine | None = None
        self.loop: EngineLoop | None = None
        self._kv_publisher: Any = None
        self._snapshots: Any = None
        self._last_snapshot = 0.0
        self._ids = itertools.count()

    @classmethod
    async def from_args(cls, argv: list[str] | None = None) -> tuple[AutoglmEngine, WorkerConfig]:
        args = parse_args(argv)
        from runtime.manifest import Manifest

        manifest = Manifest.load(args.engines)
        name = args.served_model_name or manifest.model["name"]
        config = WorkerConfig(
            namespace=args.namespace,
            component=COMPONENT,
            endpoint="generate",
            # Dynamo loads the tokenizer and chat template from this local directory.
            model_name=str((args.engines / manifest.tokenizer_dir).resolve()),
            served_model_name=name,
            discovery_backend=args.discovery_backend,
            request_plane=args.request_plane,
            event_plane=args.event_plane,
        )
        args.served_model_name = name
        return cls(args), config

    async def start(self, worker_id: int) -> EngineConfig:
        a = self.args
        self.engine = await asyncio.to_thread(
            OurEngine, a.engines, a.precision, a.threads, a.kv_blocks, a.max_batch, prefix_caching=True
        )
        self.loop = EngineLoop(self.engine, on_kv_events=self._on_kv_events, on_step=self._on_step)
        limits = self.engine.limits
        log.info(
            "worker %s: %s (%s) ready, %d KV blocks of %d tokens",
            worker_id, a.served_model_name, self.engine.precision, self.engine.kv.num_blocks - 1,
            limits.block_size,
        )  # fmt: skip
        return EngineConfig(
            model=str(self.engine.tokenizer_dir.resolve()),
            served_model_name=a.served_model_name,
            llm=LlmRegistration(
                context_length=limits.max_seq_len,
                kv_cache_block_size=limits.block_size,
                total_kv_blocks=self.engine.kv.num_blocks - 1,
                max_num_seqs=self.engine.scheduler.config.max_batch,
            ),
        )

    # ---- KV events and load snapshots for the router -----------------------------------------
    async def kv_event_sources(self) -> list[KvEventSource]:
        return [PushSource(on_ready=self._set_kv_publisher, dp_rank=0)]

    def _set_kv_publisher(self, publisher: Any) -> None:
        self._kv_publisher = publisher

    def component_metrics_dp_ranks(self) -> list[int]:
        return [0]

    def attach_snapshot_publisher(self, publisher: Any) -> None:
        self._snapshots = publisher

    def _on_kv_events(self, events: KvEvents) -> None:  # the engine loop's thread
        publisher = self._kv_publisher
        if publisher is None:
            return
        if events.removed:
            publisher.publish_removed([signed64(h) for h in events.removed])
        for run_ in events.stored:
            publisher.publish_stored(
                token_ids=run_.token_ids,
                num_block_tokens=[self.engine.limits.block_size] * len(run_.block_hashes),
                block_hashes=[signed64(h) for h in run_.block_hashes],
                parent_hash=None if run_.parent_hash is None else signed64(run_.parent_hash),
            )

    def _on_step(self) -> None:  # the engine loop's thread
        now = time.monotonic()
        if self._snapshots is None or now - self._last_snapshot < SNAPSHOT_EVERY_S:
            return
        self._last_snapshot = now
        s = self.loop.stats()
        self._snapshots.publish(
            0,
            ComponentSnapshot(
                kv_used_blocks=s.kv_used_blocks,
                kv_total_blocks=s.kv_total_blocks,
                gpu_cache_usage=s.kv_used_blocks / max(s.kv_total_blocks, 1),
                dp_rank=0,
                kv_cache_hit_rate=s.prefix_hit_rate,
            ),
        )

    # ---- requests ----------------------------------------------------------------------------
    def _sampling(self, request: dict) -> SamplingParams:
        sampling = request.get("sampling_options") or {}
        stop = request.get("stop_conditions") or {}
        if (sampling.get("n") or 1) != 1:
            raise InvalidArgument(f"n={sampling['n']}: this worker generates one choice per request")
        stop_ids = set(self.engine.tokenizer.stop_token_ids)
        if not stop.get("ignore_eos"):
            stop_ids.update(stop.get("stop_token_ids_hidden") or ())
        try:
            return SamplingParams(
                temperature=float(_given(sampling.get("temperature"), 0.0)),
                top_p=float(_given(sampling.get("top_p"), 1.0)),
                top_k=max(int(_given(sampling.get("top_k"), 0)), 0),
                seed=sampling.get("seed"),
                presence_penalty=float(_given(sampling.get("presence_penalty"), 0.0)),
                frequency_penalty=float(_given(sampling.get("frequency_penalty"), 0.0)),
                max_tokens=stop.get("max_tokens") or self.engine.limits.max_seq_len,
                stop_token_ids=tuple(sorted(stop_ids)) if not stop.get("ignore_eos") else (),
            )
        except ValueError as error:
            raise InvalidArgument(str(error)) from None

    async def generate(self, request: dict, context: Context) -> AsyncGenerator[dict, None]:
        if self.loop is None:
            raise EngineShutdown("the engine is not started")
        if request.get("multi_modal_data"):
            raise InvalidArgument(
                "images and audio are not served through Dynamo yet: send text only, or use "
                "`autoglm-trt serve` without --dynamo"
            )
        normalize_request_token_ids(request)
        prompt = list(request["token_ids"])
        if not prompt:
            raise InvalidArgument("the prompt has no tokens")
        params = self._sampling(request)
        rid = f"{context.id()}-{next(self._ids)}"
        ours = Request(rid, PreparedPrompt(prompt), params)
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.loop.submit(ours, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        done = False
        try:
            while True:
                items = [await queue.get()]
                while not queue.empty():  # everything the engine made while we were away
                    items.append(queue.get_nowait())
                tokens, finish = [], None
                for item in items:
                    if isinstance(item, RuntimeUserError):
                        done = True
                        raise InvalidArgument(str(item))
                    if isinstance(item, EngineFailure):
                        done = True
                        raise Unknown(str(item))
                    finish = item.finish_reason
                    if not (finish == "stop" and item.token_id in params.stop_token_ids):
                        tokens.append(item.token_id)  # stop tokens are not text
                if finish is None:
                    yield {"token_ids": tokens, "index": 0}
                    continue
                done = True
                cached = ours.num_cached_prompt
                log.info(
                    "request %s: %d prompt tokens (%d from the prefix cache), %d generated, %s",
                    rid, len(prompt), cached, len(ours.output_ids), finish,
                )  # fmt: skip
                yield {
                    "token_ids": tokens,
                    "index": 0,
                    "finish_reason": finish,
                    "completion_usage": {
                        "prompt_tokens": len(prompt),
                        "completion_tokens": len(ours.output_ids),
                        "total_tokens": len(prompt) + len(ours.output_ids),
                        "prompt_tokens_details": {"cached_tokens": cached},
                    },
                }
                return
        finally:
            if not done:  # cancelled, or the consumer went away: free its slot and blocks now
                self.loop.abort(rid)

    async def abort(self, context: Context) -> None:
        # generate()'s own cleanup aborts the request in the engine when Dynamo stops iterating.
        log.info("request %s cancelled", context.id())

    async def cleanup(self) -> None:
        if self.loop is not None:
            self._kv_publisher = None
            await asyncio.to_thread(self.loop.close)
            self.loop = None


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="autoglm-trt engines as an NVIDIA Dynamo backend worker")
    p.add_argument("--engines", type=Path, required=True, help="engines directory (its manifest.json)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads; 0 = all cores")
    p.add_argument("--kv-blocks", type=int, default=None)
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--served-model-name", default=None, help="default: the manifest's model name")
    p.add_argument("--namespace", default=NAMESPACE)
    p.add_argument("--discovery-backend", default="file")
    p.add_argument("--request-plane", default="tcp")
    p.add_argument("--event-plane", default="zmq")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run(AutoglmEngine, argv)


if __name__ == "__main__":
    main()
