"""Request body -> a validated schema, or an APIError that says what is wrong in our own words.

pydantic's Rust JSON parser reads the body: it stops at about 200 levels of nesting (no Python
recursion, so no RecursionError), refuses lone UTF-16 surrogates and invalid UTF-8, and is
several times faster than `json.loads` plus validation, which matters because it runs on the
event loop every stream shares.
"""

from __future__ import annotations

import json
import re

from fastapi import Request
from pydantic import BaseModel, ValidationError

from runtime.gateway.errors import APIError, describe_validation
from runtime.gateway.schemas import first_unsupported

_WHERE = re.compile(r"line (\d+) column (\d+)")
_MEDIA_KEYS = (b'"image_url"', b'"input_audio"')
ESCAPED_CHAR_BYTES = 12  # the most JSON text one character can take: a \uXXXX\uXXXX surrogate pair
TEXT_BODY_SLACK = 1 << 20  # roles, keys, sampling fields and stop strings around the prompt


def text_body_limit(prompt_chars: int) -> int:
    """The largest body a request without media can need: its prompt fully escaped, plus slack."""
    return prompt_chars * ESCAPED_CHAR_BYTES + TEXT_BODY_SLACK


def _json_problem(message: str) -> str:
    """pydantic's `json_invalid` message -> ours (the parser's wording stays in its own domain)."""
    match = _WHERE.search(message)
    where = f" at line {match.group(1)} column {match.group(2)}" if match else ""
    if "recursion limit" in message:
        return f"the request body nests too deeply{where}; JSON bodies may nest about 200 levels"
    if "surrogate" in message or "hex escape" in message:
        return (
            f"the request body has a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair)"
            f"{where}; text must be valid Unicode"
        )
    if "unicode" in message or "utf-8" in message.lower():
        return f"the request body is not valid UTF-8{where}"
    return f"the request body is not valid JSON{where}"


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


async def parse(request: Request, schema: type[BaseModel], limit: int, text_limit: int | None) -> BaseModel:
    """`limit`: any body; `text_limit`: a body without image or audio parts, whose size is then
    the prompt's (refused after a byte scan, before the parse, which holds the event loop)."""
    raw = bytearray()  # grown chunk by chunk: no single copy of a large body holds the event loop
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:  # a chunked body has no content-length for Guard to check
            raise APIError(
                413, f"the request body is over {limit} bytes; this server accepts at most {limit}"
            )
    if text_limit is not None and len(raw) > text_limit and not any(key in raw for key in _MEDIA_KEYS):
        raise APIError(
            400,
            f"the request body is {len(raw):,} bytes and carries no image or audio: its prompt is longer "
            f"than the engines can take (a text-only request needs at most {text_limit:,} bytes)",
        )
    try:
        body = schema.model_validate_json(raw)
    except ValidationError as error:
        raise _refusal(error.errors(include_url=False, include_input=False)) from None
    unsupported = first_unsupported(body)
    if unsupported:
        param, value = unsupported
        raise APIError(
            400,
            f"{param}={_shown(value)} is not supported by this server yet; leave it out "
            f"(the README lists what is supported)",
            param=param,
            code="unsupported_parameter",
        )
    return body


def _refusal(errors: list[dict]) -> APIError:
    first = errors[0]
    kind, where = first["type"], ".".join(str(p) for p in first.get("loc", ()))
    if kind == "json_invalid":
        return APIError(400, _json_problem(first.get("msg", "")))
    if kind == "model_type" and not where:
        return APIError(400, "the request body must be a JSON object")
    if kind == "extra_forbidden":
        return APIError(
            400,
            f"unknown field {where!r}; this server does not know it (the README lists the fields it takes)",
            param=where,
            code="unknown_parameter",
        )
    message, param = describe_validation(errors)
    return APIError(422, message, param=param)
