"""The gateway's side of the `llm` model: one gRPC stream per generation (runtime/server/wire.py).

A generation is an async iterator of `Chunk`s; closing it early (the HTTP client went away)
cancels the gRPC call, which Triton turns into `request.is_cancelled()` in the model, and the
scheduler frees the request's KV blocks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from runtime.server.wire import ERROR_USER, STATS_REQUEST, GenerateRequest


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
    """Triton or the model cannot be reached (the gateway answers 503)."""


def _bytes_input(name: str, items: list[bytes]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [len(items)], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_))
    return tensor


def _text(result, name: str) -> str:
    array = result.as_numpy(name)
    return "" if array is None or array.size == 0 else array.reshape(-1)[0].decode("utf-8")


class TritonLLM:
    def __init__(self, url: str, model: str = "llm") -> None:
        self.url = url
        self.model = model
        self.client = aioclient.InferenceServerClient(url)

    async def close(self) -> None:
        await self.client.close()

    async def ready(self, models: tuple[str, ...]) -> bool:
        try:
            if not await self.client.is_server_ready():
                return False
            for name in (self.model, *models):
                if not await self.client.is_model_ready(name):
                    return False
            return True
        except (InferenceServerException, grpc.RpcError):
            return False

    async def generate(
        self, request: GenerateRequest, images: list[bytes] = (), audios: list[bytes] = ()
    ) -> AsyncIterator[Chunk]:
        inputs = [_bytes_input("request", [request.to_json()])]
        if images:
            inputs.append(_bytes_input("images", list(images)))
        if audios:
            inputs.append(_bytes_input("audios", list(audios)))

        async def requests():
            yield {"model_name": self.model, "inputs": inputs}

        stream = self.client.stream_infer(requests())
        finished = False
        try:
            async for result, error in stream:
                if error is not None:
                    finished = True
                    message = str(error.message() if hasattr(error, "message") else error)
                    if message.startswith(ERROR_USER):
                        raise LLMUserError(message.removeprefix(ERROR_USER))
                    raise LLMUnavailable(message)
                finish = _text(result, "finish_reason") or None
                finished = finish is not None  # the model sent its last response: nothing to cancel
                ids = result.as_numpy("token_ids")
                info = json.loads(_text(result, "info") or "{}")
                content, reasoning = _text(result, "content"), _text(result, "reasoning")
                yield Chunk(content, reasoning, [] if ids is None else ids.tolist(), finish, info)
                if finished:
                    return
        except InferenceServerException as error:
            raise LLMUnavailable(f"Triton at {self.url}: {error.message()}") from None
        except grpc.RpcError as error:
            finished = True
            raise LLMUnavailable(f"Triton at {self.url} is unreachable: {error.details()}") from None
        finally:
            if not finished:
                stream.cancel()  # the consumer left early: Triton cancels the request

    async def stats(self) -> dict:
        """The scheduler's snapshot (running, waiting, kv_usage, prefix_queries, prefix_hits)."""
        info: dict = {}
        async for chunk in self.generate(STATS_REQUEST):
            info = chunk.info
        return info
