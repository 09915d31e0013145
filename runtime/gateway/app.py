"""The FastAPI app: OpenAI routes, /health, /metrics, auth, body limits and error bodies."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.errors import PromptTooLongError
from runtime.gateway.auth import Access, BearerAuth
from runtime.gateway.config import GatewayConfig
from runtime.gateway.errors import (
    APIError,
    api_error_handler,
    describe_validation,
    error_response,
    request_id_of,
)
from runtime.gateway.generation import PlainText, respond
from runtime.gateway.guard import Guard
from runtime.gateway.media import to_wire
from runtime.gateway.metrics import GatewayMetrics
from runtime.gateway.parsing import parse, text_body_limit
from runtime.gateway.power_gate import PowerGate
from runtime.gateway.responses import Completion
from runtime.gateway.schemas import ChatCompletionRequest, CompletionRequest
from runtime.gateway.tool_calls import ToolPlan, response_format_grammar
from runtime.gateway.triton_llm import LLMUnavailable, TritonLLM
from runtime.power.metrics import PowerMetrics
from runtime.power.monitor import PowerMonitor
from runtime.server.wire import GenerateRequest, WireError
from runtime.tool_format import FORMATS

log = logging.getLogger(__name__)


def create_app(config: GatewayConfig) -> FastAPI:
    metrics = GatewayMetrics()
    limits = config.prompt_limits
    text_limit = text_body_limit(limits.max_chars) if limits is not None else None

    gate = PowerGate(None)
    if config.power is not None:
        power = config.power
        gate = PowerGate(
            PowerMonitor(
                power.sysfs_root, power.policy, power.built, power.interval_s, current=power.precision
            ),
            PowerMetrics(metrics.registry, power.built),
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.llm = TritonLLM(config.triton_url, config.llm_model)
        if gate.monitor is not None:
            gate.monitor.start()
        yield
        if gate.monitor is not None:
            gate.monitor.stop()
        await app.state.llm.close()

    app = FastAPI(title="autoglm-trt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_exception_handler(APIError, api_error_handler)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code in (404, 405):
            return error_response(APIError(404, f"no route {request.method} {request.url.path}"))
        return error_response(APIError(error.status_code, str(error.detail)), request_id_of(request.scope))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError):
        message, param = describe_validation(error.errors())
        return error_response(APIError(422, message, param=param))

    guarded = config
    if config.jwt is not None:  # auth.py takes the API key too: either one lets a request in
        app.add_middleware(BearerAuth, access=Access(config.api_key, config.jwt))
        guarded = replace(config, api_key=None)
    app.add_middleware(Guard, config=guarded, metrics=metrics)

    @app.get("/health")
    async def health():
        if await app.state.llm.ready(config.encoder_models):
            power = gate.snapshot()  # only with a power policy
            return {"status": "ok"} if power is None else {"status": "ok", "power": power}
        return error_response(APIError(503, "Triton or its models are not ready"))

    @app.get("/metrics")
    async def prometheus():
        try:
            metrics.update_scheduler(await app.state.llm.stats())
        except LLMUnavailable as error:
            log.warning("scheduler stats unavailable: %s", error)
        gate.publish()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def card(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "autoglm-trt"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card(name) for name in config.names]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        _check_model(model_id, config)
        return card(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatCompletionRequest, config.max_body_bytes, text_limit)
        _check_model(body.model, config)
        messages, images, audios = to_wire(body.messages, config.allow_local_media)
        tools = ToolPlan(body, FORMATS[config.tool_format])
        grammar = tools.grammar()
        if body.response_format is not None and body.response_format.type != "text":
            if grammar is not None:
                raise APIError(
                    400,
                    "response_format cannot apply when tool_choice forces a call; use one of them",
                    param="response_format",
                )
            grammar = response_format_grammar(body.response_format)
        template_kwargs = dict(body.chat_template_kwargs or {})
        if body.enable_thinking is not None:
            template_kwargs["enable_thinking"] = body.enable_thinking
        wire = _wire(
            request,
            body,
            config,
            messages=tools.messages(messages, body.messages),
            template_kwargs=template_kwargs,
            continue_final_message=body.continue_final_message,
            max_tokens=body.max_completion_tokens or body.max_tokens or config.default_chat_max_tokens,
            logprobs=chat_logprobs(body),
            grammar=grammar,
        )
        shape = Completion(
            body.model, chat=True, return_reasoning=body.return_reasoning, logprobs=bool(body.logprobs)
        )
        return await _respond(request, wire, images, audios, shape, body, tools.parser())

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionRequest, config.max_body_bytes, text_limit)
        _check_model(body.model, config)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, f"prompt must be one string, got a list of {len(prompts)}", param="prompt")
        max_tokens = body.max_tokens or config.default_completion_max_tokens
        if body.echo and body.logprobs is not None:
            raise APIError(
                400,
                "echo with logprobs (the prompt's own logprobs) is not supported; drop one of them",
                param="echo",
                code="unsupported_parameter",
            )
        wire = _wire(request, body, config, prompt=prompts[0], max_tokens=max_tokens, logprobs=body.logprobs)
        shape = Completion(
            body.model, chat=False, logprobs=body.logprobs is not None, echo=prompts[0] if body.echo else ""
        )
        return await _respond(request, wire, [], [], shape, body)

    async def _respond(request: Request, wire, images, audios, shape, body, parser=None):
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        llm = request.app.state.llm
        wires = choices(wire, body.n)
        return await respond(
            request.receive,
            llm,
            wires,
            images,
            audios,
            shape,
            body.stream,
            include_usage,
            metrics,
            parser or PlainText,
            gate,
        )

    return app


def _wire(request: Request, body, config: GatewayConfig, **fields) -> GenerateRequest:
    """The llm model's request, checked here as the model would check it, and measured: a prompt
    that cannot fit is refused before it is sent to Triton, let alone tokenized."""
    wire = GenerateRequest(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        stop=body.stop_list(),
        request_id=request_id_of(request.scope) or "",
        **fields,
    )
    try:
        wire.validate()
        if config.prompt_limits is not None:
            config.prompt_limits.check(wire.text_chars(), len(wire.messages or ()))
    except WireError as error:
        raise APIError(400, str(error), param=error.param) from None
    except PromptTooLongError as error:
        raise APIError(400, str(error), param="messages" if wire.messages else "prompt") from None
    return wire


def chat_logprobs(body: ChatCompletionRequest) -> int | None:
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


def choices(wire: GenerateRequest, n: int) -> list[GenerateRequest]:
    """One wire request per choice; a seeded request's choices draw with seeds seed, seed + 1, …"""
    return [wire] + [
        replace(wire, request_id=f"{wire.request_id}-{i}", seed=None if wire.seed is None else wire.seed + i)
        for i in range(1, n)
    ]


def _check_model(name: str, config: GatewayConfig) -> None:
    if name not in config.names:
        served = ", ".join(repr(n) for n in config.names)
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {served}",
            param="model",
            code="model_not_found",
        )
