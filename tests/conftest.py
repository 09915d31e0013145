"""Session-scoped models and engines, built once per test run with the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "builder"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"autoglm-trt {' '.join(map(str, args))} failed:\n{result.stderr[-4000:]}")
    return result


def _model(tmp_path_factory, preset: str) -> Path:
    out = tmp_path_factory.getbasetemp() / "models" / preset
    if not (out / "config.json").exists():
        run_cli("model", "create", "--preset", preset, "--out", out)
    return out


def _engines(
    tmp_path_factory, model: Path, precisions=("fp32", "fp16"), suffix: str = "", stages: int = 1
) -> Path:
    """`stages` > 1: the text decoder in that many pipeline stages (their graphs in a work dir of
    their own, so other stage counts do not re-export them)."""
    base = tmp_path_factory.getbasetemp()
    out = base / "engines" / f"{model.name}{suffix}"
    work = base / "build" / (model.name if stages == 1 else f"{model.name}-stages{stages}")
    if not (out / "manifest.json").exists():
        run_cli(
            "build",
            "--model",
            model,
            "--out",
            out,
            "--work-dir",
            work,
            *(arg for precision in precisions for arg in ("--precision", precision)),
            "--backend",
            "onnxruntime",
            *(("--pipeline-stages", str(stages)) if stages > 1 else ()),
        )
    return out


@pytest.fixture(scope="session")
def glm4v_tiny_model(tmp_path_factory) -> Path:
    return _model(tmp_path_factory, "glm4v-tiny")


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory) -> Path:
    return _model(tmp_path_factory, "smollm2-135m")


@pytest.fixture(scope="session")
def glm4v_tiny_engines(tmp_path_factory, glm4v_tiny_model) -> Path:
    return _engines(tmp_path_factory, glm4v_tiny_model)


@pytest.fixture(scope="session")
def glm4v_tiny_int8_engines(tmp_path_factory, glm4v_tiny_model, glm4v_tiny_engines) -> Path:
    """fp32, fp16 and int8 engines in their own directory (same work dir: the export is reused), so
    tests that expect the default precisions or `auto` = fp16 are unaffected."""
    return _engines(tmp_path_factory, glm4v_tiny_model, ("fp32", "fp16", "int8"), suffix="-int8")


@pytest.fixture(scope="session")
def smollm2_engines(tmp_path_factory, smollm2_model) -> Path:
    return _engines(tmp_path_factory, smollm2_model)


@pytest.fixture(scope="session")
def glm4v_tiny_staged(tmp_path_factory, glm4v_tiny_model):
    """fp32, int8 and int4 in 2 stages."""
    return _engines(tmp_path_factory, glm4v_tiny_model, ("fp32", "int8", "int4"), "-stages2", stages=2)


@pytest.fixture(scope="session")
def smollm2_staged(tmp_path_factory, smollm2_model):
    return {
        stages: _engines(tmp_path_factory, smollm2_model, ("fp32",), f"-stages{stages}", stages=stages)
        for stages in (2, 3)
    }


@pytest.fixture(params=["glm4v-tiny", "smollm2-135m"])
def built(request) -> tuple[Path, Path]:
    """(model dir, engines dir) for each preset."""
    name = {"glm4v-tiny": "glm4v_tiny", "smollm2-135m": "smollm2"}[request.param]
    return request.getfixturevalue(f"{name}_model"), request.getfixturevalue(f"{name}_engines")
