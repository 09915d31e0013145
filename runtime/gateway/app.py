"""The FastAPI app: OpenAI routes, /health, /metrics, auth, body limits and error bodies."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.gateway.config import GatewayConfig
from runtime.gateway.errors import APIError, api_error_handler, describe_validation, error_response
from runtime.gateway.generation import respond
from runtime.gateway.guard import Guard
from runtime.gateway.media import to_wire
from runtime.gateway.metrics import GatewayMetrics
from runtime.gateway.responses import Completion
from runtime.gateway.schemas import ChatCompletionRequest, CompletionRequest
from runtime.gateway.triton_llm import LLMUnavailable, TritonLLM
from runtime.server.wire import GenerateRequest

log = logging.getLogger(__name__)


def create_app(config: GatewayConfig) -> FastAPI:
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.llm = TritonLLM(config.triton_url, config.llm_model)
        yield
        await app.state.llm.close()

    app = FastAPI(title="autoglm-trt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_exception_handler(APIError, api_error_handler)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code in (404, 405):
            return error_response(APIError(404, f"no route {request.method} {request.url.path}"))
        return error_response(APIError(error.status_code, str(error.detail)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError):
        message, param = describe_validation(error.errors())
        return error_response(APIError(422, message, param=param))

    app.add_middleware(Guard, config=config, metrics=metrics)

    @app.get("/health")
    async def health():
        if await app.state.llm.ready(config.encoder_models):
            return {"status": "ok"}
        return error_response(APIError(503, f"Triton at {config.triton_url} or its models are not ready"))

    @app.get("/metrics")
    async def prometheus():
        try:
            metrics.update_scheduler(await app.state.llm.stats())
        except LLMUnavailable as error:
            log.warning("scheduler stats unavailable: %s", error)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        card = {"id": config.model_id, "object": "model", "created": 0, "owned_by": "autoglm-trt"}
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        _check_model(model_id, config)
        return {"id": config.model_id, "object": "model", "created": 0, "owned_by": "autoglm-trt"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, ChatCompletionRequest, config.max_body_bytes)
        _check_common(body, config)
        messages, images, audios = to_wire(body.messages, config.allow_local_media)
        template_kwargs = dict(body.chat_template_kwargs or {})
        if body.enable_thinking is not None:
            template_kwargs["enable_thinking"] = body.enable_thinking
        wire = _wire(
            body,
            messages=messages,
            template_kwargs=template_kwargs,
            continue_final_message=body.continue_final_message,
            max_tokens=body.max_completion_tokens or body.max_tokens or config.default_chat_max_tokens,
        )
        shape = Completion(config.model_id, chat=True, return_reasoning=body.return_reasoning)
        return await _respond(request, wire, images, audios, shape, body)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest, config.max_body_bytes)
        _check_common(body, config)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, f"prompt must be one string, got a list of {len(prompts)}", param="prompt")
        wire = _wire(
            body, prompt=prompts[0], max_tokens=body.max_tokens or config.default_completion_max_tokens
        )
        shape = Completion(config.model_id, chat=False)
        return await _respond(request, wire, [], [], shape, body)

    async def _respond(request: Request, wire, images, audios, shape, body):
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await respond(
            request.app.state.llm, wire, images, audios, shape, body.stream, include_usage, metrics
        )

    return app


def _wire(body, **fields) -> GenerateRequest:
    return GenerateRequest(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_list(),
        **fields,
    )


def _check_model(name: str, config: GatewayConfig) -> None:
    if name != config.model_id:
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {config.model_id!r}",
            param="model",
            code="model_not_found",
        )


def _check_common(body, config: GatewayConfig) -> None:
    _check_model(body.model, config)
    if body.n != 1:
        raise APIError(400, f"n={body.n} is not supported; ask for one choice (n=1)", param="n")


async def _parse(request: Request, schema: type[BaseModel], limit: int) -> BaseModel:
    raw = await request.body()
    if len(raw) > limit:  # a chunked body has no content-length for Guard to check
        raise APIError(413, f"the request body is {len(raw)} bytes; this server accepts at most {limit}")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise APIError(400, f"the request body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        message, param = describe_validation(error.errors())
        raise APIError(422, message, param=param) from None
