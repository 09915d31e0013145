"""Real servers for the serving tests: `autoglm-trt serve` (tritonserver + gateway) as a
subprocess on free loopback ports, once per session per engines directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runtime.server.background import BackgroundServer, start_background_server

API_KEY = "test-key"
SERVED_NAMES = ("autoglm-phone-9b", "glm4v-tiny")  # what AutoGLM clients ask for, and its own name


def stop(server: BackgroundServer) -> None:
    """SIGTERM must stop the gateway, tritonserver and its Python stubs, with exit code 0, and
    remove the temporary folder that held Triton's log."""
    log = Path(re.search(r"triton log\s+(\S+)", "\n".join(server.lines)).group(1))
    assert log.is_file()
    code, left = server.stop()
    assert code == 0, f"serve exited with {code}"
    assert not left, f"processes left behind: {[p.pid for p in left]}"
    assert not log.parent.exists(), f"{log.parent} left behind"


@pytest.fixture(scope="session")
def smollm2_server(smollm2_engines):
    """smollm2-135m (real weights), with bearer auth on."""
    server = start_background_server(smollm2_engines, api_key=API_KEY, extra_args=("--threads", "1"))
    yield server
    stop(server)


@pytest.fixture(scope="session")
def glm4v_server(glm4v_tiny_engines):
    """glm4v-tiny: <think> tokens and a template that honours enable_thinking; no auth. Served
    under two names; `server.model` is the first."""
    names = [arg for name in SERVED_NAMES for arg in ("--served-model-name", name)]
    server = start_background_server(glm4v_tiny_engines, extra_args=("--threads", "1", *names))
    yield server
    stop(server)
