"""Run `autoglm-trt serve` as a child process and wait for its ready line (tests, benchmarks)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class BackgroundServer:
    engines: Path
    model: str  # the id clients pass as `model`
    base_url: str  # http(s)://127.0.0.1:PORT/v1
    grpc_url: str  # 127.0.0.1:PORT (Triton)
    api_key: str | None
    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)  # its output so far (it keeps growing)

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stop(self, timeout: float = 60.0) -> tuple[int, list[psutil.Process]]:
        """SIGTERM; returns (exit code, descendants still alive afterwards, which are killed)."""
        descendants = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        time.sleep(0.5)
        alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for p in alive:
            p.kill()
        return code, alive


def _pump(stream, seen: list[str], ready: queue.Queue) -> None:
    """Every line into `seen` for the server's whole life; True on `ready` once, False at the end."""
    for line in stream:
        seen.append(line.rstrip("\n"))
        if line.startswith("ready"):
            ready.put(True)
    ready.put(False)


def start_background_server(
    engines: Path, api_key: str | None = None, extra_args: tuple[str, ...] = (), timeout: float = 180.0
) -> BackgroundServer:
    """Start `autoglm-trt serve` on free loopback ports; return once it prints `ready`."""
    command = [
        sys.executable,
        "-m",
        "builder",
        "serve",
        "--engines",
        str(engines),
        "--port",
        "0",
        "--grpc-port",
        "0",
        *extra_args,
    ]
    if api_key:
        command += ["--api-key", api_key]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    seen: list[str] = []
    ready: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, seen, ready), daemon=True).start()
    try:
        started = ready.get(timeout=timeout)
    except queue.Empty:
        started = False
    if started:
        text = "\n".join(seen)
        return BackgroundServer(
            engines=engines,
            model=re.search(r"serve: (\S+) ", text).group(1),
            base_url=re.search(r"OpenAI API\s+(https?://\S+/v1)", text).group(1),
            grpc_url=re.search(r"grpc://(\S+)", text).group(1),
            api_key=api_key,
            process=process,
            lines=seen,
        )
    process.kill()
    process.wait()
    raise RuntimeError("autoglm-trt serve did not become ready:\n" + "\n".join(seen))
