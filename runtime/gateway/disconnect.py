"""Stop working for a client that has left, whatever the request is doing at that moment.

A handler awaiting a queued request's first token, or collecting a whole non-streamed answer,
never touches the connection, so nothing would notice the client leaving. `until_disconnect`
races the work against the ASGI `http.disconnect` message and cancels the work when it comes
first: the generation it was reading is closed, TritonLLM asks the model to drop the request, and
the scheduler frees its slot and blocks before its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi.responses import StreamingResponse

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before the response was complete."""


async def _disconnected(receive) -> None:
    # The body has been read, so the next message is the disconnect (or the end of the cycle).
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientGone (with `work` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone
    finally:
        watcher.cancel()
        task.cancel()  # a no-op when done; covers this coroutine itself being cancelled


class EventStream(StreamingResponse):
    """Server-sent events that end, and close their source (cancelling the generation), the
    moment the client leaves, whether or not a token is on its way at that moment."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await until_disconnect(receive, self.stream_response(send))
        except (ClientGone, OSError):
            pass
        finally:
            await self.body_iterator.aclose()
