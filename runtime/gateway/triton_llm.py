"""The gateway's side of the `llm` model: one gRPC stream per generation (runtime/server/wire.py).

A generation is an async iterator of `Chunk`s. Each gRPC stream is read by its own task (the
pump), never by the consumer: a consumer that stops early (its HTTP client left), even by being
cancelled mid-read, never cancels the gRPC call. Instead the model is asked to drop the request
(a cancel op, see `wire.cancel_request` for why Triton's own cancellation is avoided); it frees
the request's slot and KV blocks before its next step and ends the stream, which the pump reads
to its end.

With `serve --replicas N` the llm model runs as N Triton models (`llm`, `llm_1`, …): the primary's
config parameter `replicas` lists them (set by the launcher), read here on first use. Each
generation goes to the replica `replicas.ReplicaRouter` picks for its conversation; its cancel op
goes to that same replica; `stats()` adds the replicas' snapshots up; `ready()` needs them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from runtime.gateway.replicas import REPLICAS_PARAMETER, ReplicaRouter, affinity_key, combine_stats
from runtime.server.wire import ERROR_USER, OP_GENERATE, STATS_REQUEST, GenerateRequest, cancel_request

log = logging.getLogger(__name__)

DROP_SECONDS = 10.0  # a dropped request's stream must end by then, or Triton cancels it after all
_END = object()  # the pump's last item


@dataclass(frozen=True)
class Chunk:
    content: str
    reasoning: str
    token_ids: list[int]
    finish_reason: str | None
    info: dict


class LLMUserError(Exception):
    """The model rejected the request (the gateway answers 400)."""


class LLMUnavailable(Exception):
    """Triton or the model cannot be reached, or failed (the gateway answers 503 and logs this)."""


def _bytes_input(name: str, items: list[bytes]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_))
    return tensor


def _text(result, name: str) -> str:
    array = result.as_numpy(name)
    return "" if array is None or array.size == 0 else array.reshape(-1)[0].decode("utf-8")


def _chunk(result, error) -> Chunk:
    if error is not None:
        message = str(error.message() if hasattr(error, "message") else error)
        if message.startswith(ERROR_USER):
            raise LLMUserError(message.removeprefix(ERROR_USER))
        raise LLMUnavailable(message)
    ids = result.as_numpy("token_ids")
    info = json.loads(_text(result, "info") or "{}")
    finish = _text(result, "finish_reason") or None
    return Chunk(
        _text(result, "content"),
        _text(result, "reasoning"),
        [] if ids is None else ids.tolist(),
        finish,
        info,
    )


class TritonLLM:
    def __init__(self, url: str, model: str = "llm", replicas: Sequence[str] | None = None) -> None:
        """`replicas`: the Triton models that generate; None: as `model`'s `replicas` parameter
        lists them (just `model` without one)."""
        self.url = url
        self.model = model
        self.client = aioclient.InferenceServerClient(url)
        self._tasks: set[asyncio.Task] = set()  # pumps and drops still running
        self._router = ReplicaRouter(replicas) if replicas else None

    async def router(self) -> ReplicaRouter:
        """The replicas, asked of Triton once (the primary's config), then kept."""
        if self._router is None:
            try:
                config = await self.client.get_model_config(self.model, as_json=True)
            except (InferenceServerException, grpc.RpcError) as error:
                raise LLMUnavailable(f"Triton at {self.url}: no config for {self.model}: {error}") from None
            parameter = config["config"].get("parameters", {}).get(REPLICAS_PARAMETER, {})
            names = [n for n in parameter.get("string_value", "").split(",") if n] or [self.model]
            if self._router is None:  # another caller may have asked meanwhile
                self._router = ReplicaRouter(names)
        return self._router

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    async def ready(self, models: tuple[str, ...]) -> bool:
        try:
            if not await self.client.is_server_ready():
                return False
            replicas = (await self.router()).names
            for name in (*replicas, *models):
                if not await self.client.is_model_ready(name):
                    return False
            return True
        except (InferenceServerException, grpc.RpcError, LLMUnavailable):
            return False

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _pump(self, stream, responses: asyncio.Queue) -> None:
        try:
            async for pair in stream:
                responses.put_nowait(pair)
        except (InferenceServerException, grpc.RpcError) as error:
            responses.put_nowait(error)
        finally:
            responses.put_nowait(_END)

    async def generate(
        self, request: GenerateRequest, images: list[bytes] = (), audios: list[bytes] = ()
    ) -> AsyncIterator[Chunk]:
        """A generation on the replica of its conversation; other ops go to the primary model."""
        if request.op != OP_GENERATE:
            stream = self._generate(self.model, request, images, audios)
        else:
            router = await self.router()
            replica = router.acquire(affinity_key(request, images, audios))
            stream = self._routed(router, replica, request, images, audios)
        async with contextlib.aclosing(stream) as chunks:  # closing it drops an unfinished request
            async for chunk in chunks:
                yield chunk

    async def _routed(self, router, replica, request, images, audios) -> AsyncIterator[Chunk]:
        try:
            async with contextlib.aclosing(self._generate(replica, request, images, audios)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            router.release(replica)

    async def _generate(
        self, model: str, request: GenerateRequest, images: list[bytes] = (), audios: list[bytes] = ()
    ) -> AsyncIterator[Chunk]:
        inputs = [_bytes_input("request", [request.to_json()])]
        if images:
            inputs.append(_bytes_input("images", list(images)))
        if audios:
            inputs.append(_bytes_input("audios", list(audios)))

        async def requests():  # Triton's request id too, so its log lines match ours
            yield {"model_name": model, "inputs": inputs, "request_id": request.request_id}

        stream = self.client.stream_infer(requests())
        responses: asyncio.Queue = asyncio.Queue()
        pump = self._spawn(self._pump(stream, responses))
        ended = False  # the model sent its last response, or the stream broke: nothing to drop
        try:
            while (item := await responses.get()) is not _END:
                ended = True  # an error, raised below, ends the request as well
                if isinstance(item, InferenceServerException):
                    raise LLMUnavailable(f"Triton at {self.url}: {item.message()}")
                if isinstance(item, grpc.RpcError):
                    raise LLMUnavailable(f"Triton at {self.url} is unreachable: {item.details()}")
                chunk = _chunk(*item)
                ended = chunk.finish_reason is not None
                yield chunk
                if ended:
                    return
            ended = True  # the stream ended without a last response (the caller reports it)
        finally:
            if not ended:
                self._spawn(self._drop(model, request, stream, pump))

    async def _drop(self, model: str, request: GenerateRequest, stream, pump: asyncio.Task) -> None:
        """The consumer left before the last response: ask the model to drop the request, then
        let the pump read its stream to the end."""
        try:
            async with asyncio.timeout(DROP_SECONDS):
                if request.op == OP_GENERATE and request.request_id:
                    async for _ in self._generate(model, cancel_request(request.request_id)):
                        pass
                await asyncio.shield(pump)
        except (TimeoutError, LLMUnavailable, LLMUserError) as error:
            log.warning(
                "request %s: dropping it did not end its stream (%r); cancelling it in Triton",
                request.request_id,
                error,
            )
            stream.cancel()

    async def stats(self) -> dict:
        """The scheduler's snapshot (running, waiting, kv_usage, prefix_queries, prefix_hits);
        with replicas, their sum (`replicas.combine_stats`, each one's under "replicas")."""
        names = (await self.router()).names
        snapshots = await asyncio.gather(*(self._stats(name) for name in names))
        return snapshots[0] if len(names) == 1 else combine_stats(dict(zip(names, snapshots, strict=True)))

    async def _stats(self, model: str) -> dict:
        info: dict = {}
        async for chunk in self._generate(model, STATS_REQUEST):
            info = chunk.info
        return info
