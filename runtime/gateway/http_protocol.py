"""uvicorn's h11 protocol, answering requests it cannot parse with an OpenAI error body.

uvicorn answers a request head h11 refuses (for us: one over `max_header_bytes`) with a plain-text
400 and closes at once; a client still sending its large headers then sees a connection reset
instead of the answer. Here the answer is a JSON error body with the status h11 suggests (431 for
oversized headers) and a request id, and the rest of what the client sends is read and dropped
for a moment before closing, so the answer is what the client reads.
"""

from __future__ import annotations

import json
import logging

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from runtime.gateway.errors import REQUEST_ID_HEADER, error_body, new_request_id

log = logging.getLogger(__name__)

DRAIN_SECONDS = 2.0  # how long a refused connection is read (and dropped) before closing
DRAIN_BYTES = 8 * 1024 * 1024  # or until this much has been dropped
MESSAGES = {
    431: "the request headers are larger than this server accepts ({limit} bytes for the request "
    "line and headers together); send less in headers",
    400: "the request could not be parsed as HTTP/1.1",
}


class _Connection(h11.Connection):
    """Remembers the status h11 suggests for the request it refused."""

    refused_status = 400

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as error:
            self.refused_status = error.error_status_hint
            raise


class GatewayH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_limit = config.h11_max_incomplete_event_size or DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        self.conn = _Connection(h11.SERVER, self.header_limit)
        self._dropped: int | None = None  # bytes dropped since refusing; None while serving

    def send_400_response(self, msg: str) -> None:  # uvicorn's hook for a refused request head
        status = self.conn.refused_status if self.conn.refused_status in MESSAGES else 400
        rid = new_request_id()
        log.warning("request %s: refused an unparsable request head (%d): %s", rid, status, msg)
        body = json.dumps(error_body(status, MESSAGES[status].format(limit=self.header_limit))).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (REQUEST_ID_HEADER.encode(), rid.encode()),
        ]
        for event in (
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self._dropped = 0
        self.loop.call_later(DRAIN_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._dropped is None:
            super().data_received(data)
            return
        self._dropped += len(data)
        if self._dropped > DRAIN_BYTES:
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self._dropped is not None:
            self.transport.close()
        return super().eof_received()
