"""Run one generation against Triton and answer it as a whole body or as an SSE stream."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, Response

from runtime.gateway.disconnect import ClientGone, EventStream, until_disconnect
from runtime.gateway.errors import APIError, error_body
from runtime.gateway.metrics import GatewayMetrics
from runtime.gateway.responses import DONE, Completion, sse
from runtime.gateway.triton_llm import Chunk, LLMUnavailable, LLMUserError, TritonLLM
from runtime.server.wire import GenerateRequest

log = logging.getLogger(__name__)
CLIENT_CLOSED = 499  # nginx's status for "the client closed the request"; seen only in metrics


class _Timing:
    """TTFT and inter-token latency, observed as tokens arrive."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.start = self.last = time.perf_counter()
        self.seen_token = False

    def tokens(self, count: int) -> None:
        if not count:
            return
        now = time.perf_counter()
        if self.seen_token:
            for _ in range(count):
                self.metrics.inter_token.observe((now - self.last) / count)
        else:
            self.metrics.ttft.observe(now - self.start)
            self.seen_token = True
        self.last = now

    def done(self, info: dict) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.start)
        self.metrics.prompt_tokens.inc(info.get("prompt_tokens", 0))
        self.metrics.generation_tokens.inc(info.get("completion_tokens", 0))


async def _counted(chunks: AsyncIterator[Chunk], metrics: GatewayMetrics) -> AsyncIterator[Chunk]:
    """`chunks`, counted in the in-flight gauge from its first read until it ends or is closed."""
    metrics.in_flight.inc()
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        metrics.in_flight.dec()
        await chunks.aclose()


async def _next(chunks: AsyncIterator[Chunk], request_id: str) -> Chunk:
    try:
        return await anext(chunks)
    except LLMUserError as error:  # written by our model for the client: passed on as is
        raise APIError(400, str(error)) from None
    except LLMUnavailable as error:  # Triton's or a library's words: for the log only
        log.error("request %s: the model server failed: %s", request_id, error)
        raise APIError(503, "the model server could not answer this request") from None
    except StopAsyncIteration:
        log.error("request %s: the model server closed the stream without an answer", request_id)
        raise APIError(503, "the model server closed the stream without an answer") from None


async def respond(
    receive,
    llm: TritonLLM,
    wire: GenerateRequest,
    images: list[bytes],
    audios: list[bytes],
    shape: Completion,
    stream: bool,
    include_usage: bool,
    metrics: GatewayMetrics,
) -> Response:
    """A JSONResponse, or an EventStream whose first chunk has already arrived (so a bad request
    still gets its 400 before any SSE bytes are sent). A client that leaves while the request
    waits for its first token, or for a whole answer, cancels it (`receive` tells)."""
    timing = _Timing(metrics)
    rid = wire.request_id
    chunks = _counted(llm.generate(wire, images, audios), metrics)

    async def opening() -> Chunk | dict:
        first = await _next(chunks, rid)
        timing.tokens(len(first.token_ids))
        return first if stream else await _collect(chunks, first, shape, timing, rid)

    try:
        opened = await until_disconnect(receive, opening())
    except ClientGone:
        await chunks.aclose()
        log.info("request %s: the client left before the answer; cancelled", rid)
        return Response(status_code=CLIENT_CLOSED)
    except BaseException:
        await chunks.aclose()
        raise
    if not stream:
        await chunks.aclose()
        return JSONResponse(opened)
    return EventStream(
        _events(chunks, opened, shape, include_usage, timing, rid),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _collect(chunks, chunk: Chunk, shape: Completion, timing: _Timing, rid: str) -> dict:
    content, reasoning = [chunk.content], [chunk.reasoning]
    while chunk.finish_reason is None:
        chunk = await _next(chunks, rid)
        timing.tokens(len(chunk.token_ids))
        content.append(chunk.content)
        reasoning.append(chunk.reasoning)
    timing.done(chunk.info)
    return shape.full("".join(content), "".join(reasoning), chunk.finish_reason, chunk.info)


async def _events(chunks, chunk: Chunk, shape: Completion, include_usage: bool, timing: _Timing, rid: str):
    try:
        opening = shape.first_chunk()
        if opening:
            yield sse(opening)
        while True:
            body = shape.chunk(chunk.content, chunk.reasoning, chunk.finish_reason)
            if body:
                yield sse(body)
            if chunk.finish_reason is not None:
                break
            try:
                chunk = await _next(chunks, rid)
            except APIError as error:  # headers are sent: report in-band, then end the stream
                yield sse(error_body(error.status, error.message, error.param, error.status, rid))
                break
            timing.tokens(len(chunk.token_ids))
        if chunk.finish_reason is not None:
            timing.done(chunk.info)
            if include_usage:
                yield sse(shape.usage_chunk(chunk.info))
        yield DONE
    finally:
        await chunks.aclose()  # a client that left mid-stream: cancels the Triton request
