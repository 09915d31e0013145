"""Plain-socket HTTP clients for the serving tests: a request whose client leaves at a chosen
moment (the socket closes, as when a process dies or a user gives up), and the server's state
(the llm model's snapshot over gRPC, the gateway's gauges) to check what that did."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx

from runtime.server.background import BackgroundServer
from tests.runtime.serving.test_triton_llm import stats

IDLE_GAUGES = (
    "autoglm_running_sequences 0.0",
    "autoglm_waiting_sequences 0.0",
    "autoglm_kv_cache_usage_ratio 0.0",
    "autoglm_generations_in_flight 0.0",
)


class RawRequest:
    """One POST on its own connection; read as much of the answer as wanted, then `leave()`."""

    def __init__(self, server: BackgroundServer, path: str, body: dict | bytes) -> None:
        url = urlsplit(server.base_url)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = [f"POST {url.path}{path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in server.headers().items()]
        head.append(f"Content-Length: {len(payload)}")
        self.sock = socket.create_connection((url.hostname, url.port))
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        self.received = b""

    def read_events(self, count: int, timeout: float = 60) -> None:
        """Block until `count` SSE events have arrived."""
        self.sock.settimeout(timeout)
        while self.received.count(b"\ndata: ") + self.received.startswith(b"data: ") < count:
            chunk = self.sock.recv(65536)
            assert chunk, f"the server closed the stream: {self.received[-300:]!r}"
            self.received += chunk

    def read_response(self, timeout: float = 120) -> tuple[int, dict]:
        """(status, JSON body) of a whole (not streamed) answer."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.received:
            self.received += self.sock.recv(65536)
        head, _, body = self.received.partition(b"\r\n\r\n")
        length = int(
            next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1]
        )
        while len(body) < length:
            body += self.sock.recv(65536)
        return int(head.split()[1]), json.loads(body)

    def drain_in_background(self) -> None:
        """Keep reading (as a live client does) until the connection ends."""

        def drain() -> None:
            try:
                while self.sock.recv(65536):
                    pass
            except OSError:
                pass

        threading.Thread(target=drain, daemon=True).start()

    def leave(self) -> float:
        """Close the connection; returns when, for timing what follows."""
        self.sock.close()
        return time.perf_counter()


def wait_for(server: BackgroundServer, done, timeout: float = 30.0) -> tuple[dict, float]:
    """(the llm model's snapshot, seconds waited) once `done(snapshot)`; asserts within timeout."""
    start = time.perf_counter()
    while True:
        now = stats(server.grpc_url)
        if done(now):
            return now, time.perf_counter() - start
        assert time.perf_counter() - start < timeout, f"still {now} after {timeout} s"
        time.sleep(0.01)


def idle(snapshot: dict) -> bool:
    return snapshot["live"] == 0 and snapshot["running"] == 0 and snapshot["waiting"] == 0


def assert_pool_consistent(snapshot: dict, used: int | None = None) -> None:
    free, in_use, total = (snapshot[k] for k in ("kv_blocks_free", "kv_blocks_used", "kv_blocks_total"))
    assert free + in_use == total, snapshot
    if used is not None:
        assert in_use == used, snapshot


def assert_idle(server: BackgroundServer) -> None:
    """The llm model holds nothing, its pool is whole, and the gateway's gauges read idle."""
    snapshot = stats(server.grpc_url)
    assert idle(snapshot) and snapshot["kv_usage"] == 0.0, snapshot
    assert_pool_consistent(snapshot, used=0)
    metrics = httpx.get(f"{server.root}/metrics", timeout=30).text
    for gauge in IDLE_GAUGES:
        assert gauge in metrics, [line for line in metrics.splitlines() if line.startswith(gauge.split()[0])]
