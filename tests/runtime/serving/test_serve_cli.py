"""`autoglm-trt serve` refuses bad input with one `error:` line and exit code 2, before starting anything."""

from __future__ import annotations

import socket

from tests.conftest import run_cli


def test_missing_engines_dir(tmp_path):
    result = run_cli("serve", "--engines", tmp_path / "nope", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_busy_http_port(glm4v_tiny_engines):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--engines", glm4v_tiny_engines, "--port", port, check=False)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
