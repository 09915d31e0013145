"""`autoglm-trt serve --dynamo`: Dynamo's OpenAI frontend plus N of our workers on one machine.

No etcd and no NATS: every process shares a discovery folder (`--discovery-backend file`,
`DYN_FILE_KV`), requests travel over TCP and KV events over ZMQ, all bound to loopback. The
frontend routes with `--router-mode kv`: each request goes to the worker whose cached blocks
cover most of its prompt (the events runtime/dynamo/worker.py publishes), weighed against load.

Each process runs in its own session and logs to `<state dir>/logs/`; Ctrl-C or SIGTERM stops
the frontend first (no new requests), then the workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.dynamo.compat import require_dynamo
from runtime.errors import RuntimeUserError
from runtime.manifest import Manifest

STOP_GRACE_S = 15.0


class DynamoStartError(RuntimeUserError):
    """The frontend or a worker exited, or did not become ready, while starting."""


@dataclass(frozen=True)
class DynamoServeConfig:
    engines_dir: Path
    workers: int = 2
    port: int = 8000
    host: str = "127.0.0.1"
    precision: str = "auto"
    threads: int = 0  # per worker; 0: the machine's cores shared out among the workers
    kv_blocks: int | None = None
    max_batch: int | None = None
    served_model_name: str | None = None  # None: the manifest's model name, as our gateway
    state_dir: Path | None = None  # discovery folder and logs; None: a temporary folder
    ready_timeout_s: float = 180.0
    # KV router's weight on load vs cache overlap: 0 routes by cache overlap and load only.
    router_temperature: float = 0.0

    def worker_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)


class DynamoCluster:
    """The frontend and the workers as child processes. `start` returns once the frontend lists
    the model with every worker registered; `stop` ends them all."""

    def __init__(self, config: DynamoServeConfig) -> None:
        if config.workers < 1:
            raise RuntimeUserError(f"--workers must be at least 1, got {config.workers}")
        self.config = config
        manifest = Manifest.load(config.engines_dir)
        self.model = config.served_model_name or manifest.model["name"]
        self._own_state = config.state_dir is None
        self.state_dir = config.state_dir or Path(tempfile.mkdtemp(prefix="autoglm-dynamo-"))
        self.log_dir = self.state_dir / "logs"
        self.frontend: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.base_url = f"http://{config.host}:{config.port}"

    # ---- processes -------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DYN_FILE_KV=str(self.state_dir / "discovery"),
            DYN_TCP_RPC_HOST="127.0.0.1",
            DYN_TCP_RESPONSE_STREAM_HOST="127.0.0.1",
            DYN_EVENT_PLANE_HOST="127.0.0.1",
            DYN_SELF_HOST_METADATA="0",  # share model cards through the discovery folder
            NO_COLOR="1",
        )
        return env

    def planes(self) -> list[str]:
        return ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]

    def frontend_command(self) -> list[str]:
        c = self.config
        return [
            sys.executable, "-m", "dynamo.frontend", "--http-host", c.host, "--http-port", str(c.port),
            "--router-mode", "kv", "--router-temperature", str(c.router_temperature),
            "--namespace", "autoglm", *self.planes(),
        ]  # fmt: skip

    def worker_command(self) -> list[str]:
        c = self.config
        command = [
            sys.executable, "-m", "runtime.dynamo.worker", "--engines", str(c.engines_dir),
            "--precision", c.precision, "--threads", str(c.worker_threads()),
            "--served-model-name", self.model, *self.planes(),
        ]  # fmt: skip
        if c.kv_blocks is not None:
            command += ["--kv-blocks", str(c.kv_blocks)]
        if c.max_batch is not None:
            command += ["--max-batch", str(c.max_batch)]
        return command

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.log_dir / log_name, "ab")  # noqa: SIM115 - the child owns it from here
        try:
            return subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        finally:
            log.close()

    def start(self, say: Callable[[str], None] = print) -> None:
        require_dynamo()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.frontend = self._spawn(self.frontend_command(), "frontend.log")
            for i in range(self.config.workers):
                self.workers.append(self._spawn(self.worker_command(), f"worker-{i}.log"))
            say(f"dynamo: frontend and {self.config.workers} workers starting (logs in {self.log_dir})")
            self._wait_ready()
        except BaseException as error:
            self.stop(keep_logs=isinstance(error, DynamoStartError))  # the error names a log
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.processes():
                if proc.poll() is not None:
                    raise DynamoStartError(
                        f"dynamo {name} exited with code {proc.returncode} while starting; "
                        f"its log: {self.log_dir / (name.replace(' ', '-') + '.log')}"
                    )
            if self.registered_workers() >= self.config.workers and self._model_listed():
                return
            time.sleep(0.25)
        raise DynamoStartError(
            f"dynamo did not become ready in {self.config.ready_timeout_s:.0f} s "
            f"({self.registered_workers()} of {self.config.workers} workers registered); logs: {self.log_dir}"
        )

    def _get_json(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def registered_workers(self) -> int:
        """Workers serving our generate endpoint, as the frontend's /health lists them."""
        health = self._get_json("/health") or {}
        return sum(1 for i in health.get("instances", ()) if i.get("endpoint") == "generate")

    def _model_listed(self) -> bool:
        models = self._get_json("/v1/models") or {}
        return any(m.get("id") == self.model for m in models.get("data", ()))

    def processes(self) -> list[tuple[str, subprocess.Popen]]:
        named = [("frontend", self.frontend)] if self.frontend is not None else []
        return named + [(f"worker {i}", p) for i, p in enumerate(self.workers)]

    def stop(self, keep_logs: bool = False) -> list[int]:
        """SIGTERM the frontend, then the workers (each with its children); SIGKILL what is left
        after the grace period. Returns the exit codes, frontend first. A temporary state folder
        is removed unless `keep_logs`."""
        for group in ([self.frontend], self.workers):
            live = [p for p in group if p is not None and p.poll() is None]
            for proc in live:
                _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for proc in live:
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait(timeout=5)
        codes = [p.returncode for _, p in self.processes()]
        if self._own_state and not keep_logs:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return codes

    def wait(self) -> str:
        """Block until the frontend exits or every worker has; returns which happened."""
        reported: set[int] = set()
        while True:
            if self.frontend is not None and self.frontend.poll() is not None:
                return f"the frontend exited with code {self.frontend.returncode}"
            dead = [i for i, p in enumerate(self.workers) if p.poll() is not None]
            for i in set(dead) - reported:
                print(f"dynamo: worker {i} exited with code {self.workers[i].returncode}", flush=True)
                reported.add(i)
            if len(dead) == len(self.workers):
                return "every worker exited"
            time.sleep(0.5)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it is gone already
        os.killpg(proc.pid, sig)


def serve(config: DynamoServeConfig, say: Callable[[str], None] = print) -> int:
    """Run until Ctrl-C or SIGTERM (exit code 0), or until the frontend or all workers die (1)."""
    require_dynamo()  # before anything starts: one line that says how to install it
    cluster = DynamoCluster(config)
    stopping = False

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster.start(say)
        say(
            f"dynamo: serving {cluster.model} at {cluster.base_url}/v1 with {config.workers} workers "
            f"(KV-aware routing); Ctrl-C to stop"
        )
        reason = cluster.wait()
        say(f"dynamo: stopping: {reason}")
        return 1
    except KeyboardInterrupt:
        say("dynamo: stopping")
        return 0
    finally:
        signal.signal(signal.SIGTERM, on_signal)  # a second signal during stop is ignored
        stopping = True
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)


def check_gateway_only_options(given: dict[str, object], served_names: tuple[str, ...]) -> None:
    """Refuse options only our own gateway implements (`given`: option -> value, falsy when not
    given), rather than serve without them."""
    named = [option for option, value in given.items() if value]
    if named:
        raise RuntimeUserError(
            f"{', '.join(named)}: our own gateway implements these; Dynamo's frontend does not. "
            "Drop them with --dynamo (put Dynamo behind a proxy that authenticates), or serve without --dynamo."
        )
    if len(served_names) > 1:
        raise RuntimeUserError(
            f"--served-model-name given {len(served_names)} times: with --dynamo the model is served "
            "under one name; pass it once."
        )
