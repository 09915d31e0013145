"""OpenAI-style error bodies: {"error": {"message", "type", "param", "code"}}.

A body only ever says what the client can act on. Server-side failures (5xx) say what failed and
the request id; the detail (library messages, paths, tracebacks) goes to the gateway's log under
that id. Every response carries the id in the `x-request-id` header as well (see guard.py).
"""

from __future__ import annotations

import uuid

from fastapi import Request
from fastapi.responses import JSONResponse

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    431: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
}
REQUEST_ID_HEADER = "x-request-id"


class APIError(Exception):
    """Raised anywhere in a handler; answered as an OpenAI error body with this status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def new_request_id() -> str:
    return f"req-{uuid.uuid4().hex[:24]}"


def request_id_of(scope) -> str | None:
    """The id guard.py gave this request (None outside the app, e.g. a bare TestClient route)."""
    return scope.get("state", {}).get("request_id")


def error_body(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    request_id: str | None = None,
) -> dict:
    if status >= 500 and request_id:
        message = f"{message} (request id {request_id}; the server log has the details)"
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(error: APIError, request_id: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    body = error_body(error.status, error.message, error.param, error.code, request_id)
    return JSONResponse(body, status_code=error.status, headers=headers)


async def api_error_handler(request: Request, error: APIError) -> JSONResponse:
    return error_response(error, request_id_of(request.scope))


def describe_validation(errors: list[dict]) -> tuple[str, str | None]:
    """A one-line message and the offending parameter from pydantic's error list."""
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where or 'body'}: {first.get('msg', 'invalid value')}", where or None
