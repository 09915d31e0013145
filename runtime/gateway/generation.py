"""Run one generation against Triton and answer it as a whole body or as an SSE stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, StreamingResponse

from runtime.gateway.errors import APIError
from runtime.gateway.metrics import GatewayMetrics
from runtime.gateway.responses import DONE, Completion, sse
from runtime.gateway.triton_llm import Chunk, LLMUnavailable, LLMUserError, TritonLLM
from runtime.server.wire import GenerateRequest


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


async def _next(chunks: AsyncIterator[Chunk]) -> Chunk:
    try:
        return await anext(chunks)
    except LLMUserError as error:
        raise APIError(400, str(error)) from None
    except LLMUnavailable as error:
        raise APIError(503, f"the model server is unavailable: {error}") from None
    except StopAsyncIteration:
        raise APIError(503, "the model server closed the stream without an answer") from None


async def respond(
    llm: TritonLLM,
    wire: GenerateRequest,
    images: list[bytes],
    audios: list[bytes],
    shape: Completion,
    stream: bool,
    include_usage: bool,
    metrics: GatewayMetrics,
):
    """A JSONResponse, or a StreamingResponse whose first chunk has already arrived (so a bad
    request still gets its 400 before any SSE bytes are sent)."""
    timing = _Timing(metrics)
    chunks = llm.generate(wire, images, audios)
    try:
        first = await _next(chunks)
    except BaseException:
        await chunks.aclose()
        raise
    timing.tokens(len(first.token_ids))
    if not stream:
        try:
            return JSONResponse(await _collect(chunks, first, shape, timing))
        finally:
            await chunks.aclose()
    return StreamingResponse(
        _events(chunks, first, shape, include_usage, timing),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _collect(chunks, chunk: Chunk, shape: Completion, timing: _Timing) -> dict:
    content, reasoning = [chunk.content], [chunk.reasoning]
    while chunk.finish_reason is None:
        chunk = await _next(chunks)
        timing.tokens(len(chunk.token_ids))
        content.append(chunk.content)
        reasoning.append(chunk.reasoning)
    timing.done(chunk.info)
    return shape.full("".join(content), "".join(reasoning), chunk.finish_reason, chunk.info)


async def _events(chunks, chunk: Chunk, shape: Completion, include_usage: bool, timing: _Timing):
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
                chunk = await _next(chunks)
            except APIError as error:  # headers are sent: report in-band, then end the stream
                yield sse({"error": {"message": error.message, "type": "server_error", "code": error.status}})
                break
            timing.tokens(len(chunk.token_ids))
        if chunk.finish_reason is not None:
            timing.done(chunk.info)
            if include_usage:
                yield sse(shape.usage_chunk(chunk.info))
        yield DONE
    finally:
        await chunks.aclose()  # a client that left mid-stream cancels the Triton request here
