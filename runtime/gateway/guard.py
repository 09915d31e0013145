"""Pure ASGI middleware: a request id on every request (`x-request-id` on every response), bearer
auth and body size on /v1/*, request counting, 500 as a last resort.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses and client-disconnect cancellation
pass through untouched.
"""

from __future__ import annotations

import logging
import secrets

from runtime.gateway.config import GatewayConfig
from runtime.gateway.errors import REQUEST_ID_HEADER, APIError, error_response, new_request_id
from runtime.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

KNOWN_PATHS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"}


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def check_request(path: str, headers: dict[str, str], config: GatewayConfig) -> None:
    """Raise APIError 401 / 413 before the body is read."""
    if not path.startswith("/v1/"):
        return
    if config.api_key is not None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.strip().encode(), config.api_key.encode()
        ):
            raise APIError(
                401, "missing or wrong API key; send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > config.max_body_bytes:
        raise APIError(
            413, f"the request body is {length} bytes; this server accepts at most {config.max_body_bytes}"
        )


class Guard:
    def __init__(self, app, config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = {"code": 0}
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        id_header = (REQUEST_ID_HEADER.encode(), rid.encode())

        async def tracked_send(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), id_header]}
            await send(message)

        try:
            check_request(path, _headers(scope), self.config)
            await self.app(scope, receive, tracked_send)
        except APIError as error:
            await error_response(error, rid)(scope, receive, tracked_send)
        except Exception:  # a bug, not the user's input: log it, answer 500, keep serving
            log.exception("request %s: unhandled error on %s", rid, path)
            if not status["code"]:
                await error_response(APIError(500, "internal server error"), rid)(
                    scope, receive, tracked_send
                )
        finally:
            label = path if path in KNOWN_PATHS else "other"
            self.metrics.requests.labels(label, str(status["code"] or 500)).inc()
