"""Run one generation against Triton and answer it as a whole body or as an SSE stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, Response

from runtime.gateway.disconnect import ClientGone, EventStream, until_disconnect
from runtime.gateway.errors import APIError, error_body
from runtime.gateway.metrics import GatewayMetrics
from runtime.gateway.power_gate import Admission, PowerGate
from runtime.gateway.responses import DONE, ChoiceResult, Completion, sse
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


class PlainText:
    """The identity output parser: content passes through as it comes (see tool_calls.py for the
    parser that turns a model's tool-call text into `tool_calls`)."""

    def push(self, content: str) -> tuple[str, list[dict]]:
        return content, []

    def finish(self, finish_reason: str) -> tuple[str, list[dict], str]:
        return "", [], finish_reason


def merged_usage(infos: list[dict]) -> dict:
    """Usage of `n` choices of one prompt: the prompt once, every choice's completion tokens."""
    return {
        "prompt_tokens": infos[0].get("prompt_tokens", 0),
        "completion_tokens": sum(i.get("completion_tokens", 0) for i in infos),
        "cached_tokens": max(i.get("cached_tokens", 0) for i in infos),
        "precision": infos[0].get("precision"),
    }


async def respond(
    receive,
    llm: TritonLLM,
    wires: list[GenerateRequest],
    images: list[bytes],
    audios: list[bytes],
    shape: Completion,
    stream: bool,
    include_usage: bool,
    metrics: GatewayMetrics,
    parser=PlainText,
    gate: PowerGate | None = None,
) -> Response:
    """A JSONResponse, or an EventStream whose first chunks have already arrived (so a bad request
    still gets its 400 before any SSE bytes are sent). One generation per wire request (`n`
    choices): the first runs alone until its first token, so its prompt's KV blocks are cached
    and the others reuse them. A client that leaves while the request waits for its first token,
    or for a whole answer, cancels it (`receive` tells). `parser` makes each choice's output
    parser (tool calls). `gate` (a power policy) may hold the request back, and sets its precision
    and caps."""
    timing = _Timing(metrics)
    rid = wires[0].request_id
    try:
        admission = await until_disconnect(receive, (gate or PowerGate(None)).admit(wires))
    except ClientGone:
        log.info("request %s: the client left while the request waited to be admitted", rid)
        return Response(status_code=CLIENT_CLOSED)
    wires = admission.wires
    streams = [_counted(llm.generate(wire, images, audios), metrics) for wire in wires]

    async def opening() -> list[Chunk] | dict:
        first = [await _next(streams[0], rid)]
        first += await asyncio.gather(*(_next(chunks, rid) for chunks in streams[1:]))
        timing.tokens(sum(len(chunk.token_ids) for chunk in first))
        if stream:
            return first
        results = await asyncio.gather(
            *(
                _collect(chunks, chunk, timing, rid, parser())
                for chunks, chunk in zip(streams, first, strict=True)
            )
        )
        infos = [info for _, info in results]
        timing.done(merged_usage(infos))
        return shape.full([result for result, _ in results], merged_usage(infos))

    try:
        opened = await until_disconnect(receive, opening())
    except ClientGone:
        await _close(streams, admission)
        log.info("request %s: the client left before the answer; cancelled", rid)
        return Response(status_code=CLIENT_CLOSED)
    except BaseException:
        await _close(streams, admission)
        raise
    if not stream:
        await _close(streams, admission)
        return JSONResponse(opened)
    return EventStream(
        _events(streams, opened, shape, include_usage, timing, rid, parser, admission),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _close(streams, admission: Admission) -> None:
    try:
        for chunks in streams:
            await chunks.aclose()
    finally:
        admission.release()


async def _collect(chunks, chunk: Chunk, timing: _Timing, rid: str, parser) -> tuple[ChoiceResult, dict]:
    content, reasoning, logprobs, calls = [], [chunk.reasoning], [], []

    def take(chunk: Chunk) -> None:
        text, tool_calls = parser.push(chunk.content)
        content.append(text)
        calls.extend(tool_calls)
        logprobs.extend(chunk.info.get("logprobs", ()))

    take(chunk)
    while chunk.finish_reason is None:
        chunk = await _next(chunks, rid)
        timing.tokens(len(chunk.token_ids))
        take(chunk)
        reasoning.append(chunk.reasoning)
    text, tool_calls, finish_reason = parser.finish(chunk.finish_reason)
    content.append(text)
    calls.extend(tool_calls)
    result = ChoiceResult("".join(content), "".join(reasoning), finish_reason, logprobs, whole_calls(calls))
    return result, chunk.info


def whole_calls(deltas: list[dict]) -> list[dict] | None:
    """Streamed tool-call deltas (id and name first, then argument pieces) joined per call."""
    calls: dict[int, dict] = {}
    for delta in deltas:
        call = calls.setdefault(
            delta["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        call["id"] = delta.get("id") or call["id"]
        function = delta.get("function", {})
        call["function"]["name"] += function.get("name", "")
        call["function"]["arguments"] += function.get("arguments", "")
    return [calls[i] for i in sorted(calls)] or None


async def _events(
    streams, first: list[Chunk], shape: Completion, include_usage: bool, timing, rid, parser, admission
):
    """SSE chunks of every choice as they come; the usage chunk and [DONE] once all have ended."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, chunks, chunk: Chunk) -> None:
        try:
            while True:
                await queue.put((index, chunk, None))
                if chunk.finish_reason is not None:
                    return
                chunk = await _next(chunks, rid)
                timing.tokens(len(chunk.token_ids))
        except APIError as error:
            await queue.put((index, None, error))

    tasks = [asyncio.create_task(pump(i, s, c)) for i, (s, c) in enumerate(zip(streams, first, strict=True))]
    parsers = [parser() for _ in streams]
    infos: dict[int, dict] = {}
    try:
        opening = shape.first_chunk(len(streams))
        if opening:
            yield sse(opening)
        while len(infos) < len(streams):
            index, chunk, error = await queue.get()
            if error is not None:  # headers are sent: report in-band, then end the stream
                yield sse(error_body(error.status, error.message, error.param, error.status, rid))
                break
            content, calls = parsers[index].push(chunk.content)
            finish = chunk.finish_reason
            if finish is not None:
                tail, more_calls, finish = parsers[index].finish(finish)
                content, calls = content + tail, calls + more_calls
                infos[index] = chunk.info
                shape.precision = chunk.info.get("precision") or shape.precision
            logprobs = chunk.info.get("logprobs")
            body = shape.chunk(content, chunk.reasoning, finish, logprobs, index, calls or None)
            if body:
                yield sse(body)
        if len(infos) == len(streams):
            usage = merged_usage([infos[i] for i in range(len(streams))])
            timing.done(usage)
            if include_usage:
                yield sse(shape.usage_chunk(usage))
        yield DONE
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # none still reads a stream
        await _close(streams, admission)  # a client that left mid-stream: cancels the Triton requests
