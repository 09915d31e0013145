"""Run the `tritonserver` binary bundled in the nvidia-pytriton wheel, and load models into it.

Models are loaded with explicit model control, each with a config override that sets its
`engines_dir` / `precision` parameters, so `triton_repo/` itself is never edited and stays a
stock model repository. The server runs in its own process group (it forks one Python stub per
model instance); `stop()` ends the whole group.

Replicas of a model (`serve --replicas N`) are the same model directory under other names:
`replica_repository` writes a repository of symlinks (`llm_1 -> …/triton_repo/llm`), since explicit
model control loads a model by the name of its directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.errors import RuntimeUserError

STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonError(RuntimeUserError):
    """tritonserver could not start, or a model failed to load."""


def tritonserver_home() -> Path:
    try:
        import pytriton
    except ImportError:
        raise TritonError(
            "nvidia-pytriton is not installed (it bundles tritonserver); run `make setup`"
        ) from None
    return Path(pytriton.__path__[0]) / "tritonserver"


def ensure_python_stub(home: Path) -> None:
    """The Python backend looks for its stub beside libtriton_python.so; the wheel ships one per
    Python version elsewhere. Copy ours in once (atomically, so concurrent launches are safe)."""
    source = home / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub"
    target = home / "backends" / "python" / "triton_python_backend_stub"
    if not source.is_file():
        raise TritonError(f"{source} is missing: this nvidia-pytriton has no stub for Python {STUB_PYTHON}")
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copy2(source, partial)
    os.replace(partial, target)


def _prepend(variable: str, path: str) -> str:
    current = os.environ.get(variable, "")
    return f"{path}{os.pathsep}{current}" if current else path


def replica_repository(repo_dir: Path, copies: dict[str, str], out: Path) -> Path:
    """A model repository at `out`: each model of `repo_dir` as itself, and each `copies` name as
    the model it names (name -> source model), all symlinks; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    links = {m.name: m for m in repo_dir.resolve().iterdir() if (m / "config.pbtxt").is_file()}
    for name, source in copies.items():
        if source not in links:
            raise TritonError(f"{repo_dir} has no model {source!r} to replicate (no {source}/config.pbtxt)")
        links[name] = links[source]
    for name, target in links.items():
        (out / name).symlink_to(target, target_is_directory=True)
    return out


def stub_environment() -> dict[str, str]:
    """The stub finds numpy and this project through the first python3 on PATH (ours). It links
    libpython dynamically: point the loader at this interpreter's own libpython first, or a
    system libpython of another 3.11 patch release may load and fail on our stdlib's modules."""
    import sysconfig

    env = {**os.environ, "PATH": _prepend("PATH", str(Path(sys.executable).parent))}
    libdir = sysconfig.get_config_var("LIBDIR")
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        env["LD_LIBRARY_PATH"] = _prepend("LD_LIBRARY_PATH", libdir)
    return env


class TritonServer:
    def __init__(self, repo_dir: Path, grpc_port: int, log_path: Path, host: str = "127.0.0.1") -> None:
        self.repo_dir = repo_dir
        self.grpc_port = grpc_port
        self.host = host
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.load_seconds: dict[str, float] = {}

    @property
    def url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, timeout: float = 60.0) -> float:
        """Start the server and wait until it is live; returns the seconds that took."""
        home = tritonserver_home()
        ensure_python_stub(home)
        env = stub_environment()
        command = [
            str(home / "bin" / "tritonserver"),
            f"--model-repository={self.repo_dir}",
            f"--backend-directory={home / 'backends'}",
            "--model-control-mode=explicit",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            "--allow-http=false",
            "--allow-metrics=false",
            "--exit-on-error=true",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = self._client()
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise TritonError(
                    f"tritonserver exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if client.is_server_live():
                    return time.perf_counter() - start
            except Exception:  # not listening yet
                pass
            time.sleep(0.1)
        raise TritonError(f"tritonserver was not live after {timeout:.0f} s:\n{self.log_tail()}")

    def _client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url)

    def load(self, model: str, parameters: dict[str, str], instance_group: list[dict] | None = None) -> float:
        """Load `model` from the repository with these string parameters (and this
        `instance_group`, e.g. [{"kind": "KIND_GPU", "count": 1, "gpus": [1]}], in place of the
        config's when given); returns seconds."""
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2
        from tritonclient.utils import InferenceServerException

        config = text_format.Parse(
            (self.repo_dir / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        config.name = model
        for key, value in parameters.items():
            config.parameters[key].string_value = str(value)
        if instance_group is not None:
            del config.instance_group[:]
            for group in instance_group:
                json_format.ParseDict(group, config.instance_group.add())
        start = time.perf_counter()
        try:
            self._client().load_model(model, config=json_format.MessageToJson(config))
        except InferenceServerException as error:
            raise TritonError(
                f"Triton could not load {model}: {error.message()}\n{self.log_tail()}"
            ) from None
        self.load_seconds[model] = time.perf_counter() - start
        return self.load_seconds[model]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def memory_bytes(self) -> int:
        """Resident memory of the server and its Python stubs."""
        import psutil

        if not self.alive():
            return 0
        try:
            root = psutil.Process(self.process.pid)
            return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            return 0

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server (it unloads its models and ends the stubs), then SIGKILL whatever
        is left of its process group."""
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the group id is the server's pid
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):  # what is left of the group (stubs)
            os.killpg(group, signal.SIGKILL)
        self.process.wait()

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
