"""Graphs over 2 GB, with small models: the external-data threshold lowered to 1 kB sends every
step (export, fp16, int8, int4, ORT engine) down the path a 9B model takes."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess

import pytest

from runtime.engine_files import VERIFIED
from runtime.engine_loader import expected_files
from runtime.manifest import Manifest
from runtime.onnx_files import data_files, graph_complete, sha256_file
from tests.conftest import CLI

PRECISIONS = ("fp32", "fp16", "int8", "int4")
FORCE_EXTERNAL = {"AUTOGLM_TRT_EXTERNAL_DATA_BYTES": "1000"}


def run(*args, env=None, limit_file_bytes=None) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
        preexec_fn=limit if limit_file_bytes else None,
    )


def build_args(model, out, work, precisions=PRECISIONS):
    args = ["build", "--model", model, "--out", out, "--work-dir", work, "--backend", "onnxruntime"]
    return args + [a for p in precisions for a in ("--precision", p)]


@pytest.fixture(scope="module")
def external_engines(tmp_path_factory, glm4v_tiny_model):
    base = tmp_path_factory.mktemp("external")
    result = run(*build_args(glm4v_tiny_model, base / "engines", base / "work"), env=FORCE_EXTERNAL)
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "engines"


def greedy(engines, precision: str) -> list[int]:
    result = run(
        "generate", "--engines", engines, "--precision", precision, "--prompt", "Hello there",
        "--max-tokens", "12", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)["token_ids"]


def test_every_engine_keeps_its_weights_beside_it_and_the_manifest_covers_them(external_engines):
    manifest = Manifest.load(external_engines)
    for component in ("text_decoder", "vision_encoder", "audio_encoder"):
        for precision in PRECISIONS:
            entry = manifest.entry(component, precision)
            engine = external_engines / entry.file
            assert data_files(engine) == [f"{entry.file}.data"], (component, precision)
            assert graph_complete(engine)
            assert entry.size == engine.stat().st_size
            [data] = entry.data_files
            path = external_engines / data["file"]
            assert data["size"] == path.stat().st_size > engine.stat().st_size
            assert data["sha256"] == sha256_file(path)
    leftovers = [p.name for p in external_engines.iterdir() if p.name.startswith(".") and p.name != VERIFIED]
    assert leftovers == []


def test_external_data_engines_generate_what_inline_engines_do(external_engines, glm4v_tiny_int8_engines):
    for precision in ("fp32", "fp16", "int8"):
        assert greedy(external_engines, precision) == greedy(glm4v_tiny_int8_engines, precision)


@pytest.fixture
def engines_copy(external_engines, tmp_path):
    return shutil.copytree(external_engines, tmp_path / "engines")


def _data_file(engines, precision="fp32"):
    entry = Manifest.load(engines).entry("text_decoder", precision)
    return engines / entry.data_files[0]["file"]


@pytest.mark.parametrize("damage", ["missing", "renamed", "truncated", "changed"])
def test_a_damaged_data_file_is_refused_with_the_rebuild_command(engines_copy, damage):
    data = _data_file(engines_copy)
    if damage == "missing":
        data.unlink()
    elif damage == "renamed":
        data.rename(data.with_name("weights.bin"))
    elif damage == "truncated":
        os.truncate(data, data.stat().st_size // 2)
    else:  # same size, one byte flipped
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 3] ^= 0x01
        data.write_bytes(bytes(raw))
    result = run("generate", "--engines", engines_copy, "--precision", "fp32", "--prompt", "hi")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    expected = {"missing": "is missing", "renamed": "is missing", "truncated": "truncated", "changed": "hash"}
    assert line.startswith("error: ") and expected[damage] in line
    assert "autoglm-trt build --model" in line and "Traceback" not in result.stderr


def test_files_are_hashed_once_per_version_and_always_with_verify(engines_copy, monkeypatch):
    from runtime import engine_files

    hashed = []
    real = engine_files.sha256_file
    monkeypatch.setattr(engine_files, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    manifest = Manifest.load(engines_copy)
    entry = manifest.entry("text_decoder", "fp32")
    names = sorted(f.name for f in expected_files(entry))
    hint = "rebuild"

    files = expected_files(entry)
    engine_files.check_files(engines_copy, files, hint)  # a copy: new inodes, hashed once
    assert sorted(hashed) == names
    hashed.clear()
    engine_files.check_files(engines_copy, files, hint)
    assert hashed == []
    engine_files.check_files(engines_copy, files, hint, verify=True)
    assert sorted(hashed) == names
    hashed.clear()
    os.utime(_data_file(engines_copy))  # touched: its contents may have changed
    engine_files.check_files(engines_copy, files, hint)
    assert hashed == [_data_file(engines_copy).name]


def test_the_build_records_what_it_hashed_so_the_first_load_reads_no_weights(external_engines):
    verified = json.loads((external_engines / VERIFIED).read_text())
    for entries in Manifest.load(external_engines).engines.values():
        for entry in entries.values():
            for expected in expected_files(entry):
                assert verified[expected.name]["sha256"] == expected.sha256


def test_a_truncated_work_graph_is_rebuilt_not_trusted(tmp_path, glm4v_tiny_model):
    args = build_args(glm4v_tiny_model, tmp_path / "engines", tmp_path / "work", ("fp32",))
    assert run(*args, env=FORCE_EXTERNAL).returncode == 0
    data = tmp_path / "work" / "text_decoder.fp32.onnx.data"
    os.truncate(data, 100)
    result = run(*args, env=FORCE_EXTERNAL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "export text_decoder" in result.stderr  # redone, not "up to date"
    assert graph_complete(tmp_path / "work" / "text_decoder.fp32.onnx")


def test_a_full_disk_stops_the_build_with_one_line_and_leaves_nothing_half_written(
    tmp_path, glm4v_tiny_model
):
    out, work = tmp_path / "engines", tmp_path / "work"
    result = run(
        *build_args(glm4v_tiny_model, out, work, ("fp32",)), env=FORCE_EXTERNAL, limit_file_bytes=1 << 20
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: out of disk space")
    assert "Traceback" not in result.stderr
    left = [p.name for d in (out, work) if d.exists() for p in d.iterdir()]
    assert not [name for name in left if name.endswith((".onnx", ".data", ".tmp")) or ".staging-" in name]


def test_verify_catches_a_change_hidden_behind_a_restored_mtime(engines_copy):
    data = _data_file(engines_copy)
    run("generate", "--engines", engines_copy, "--precision", "fp32", "--prompt", "hi", "--max-tokens", "1")
    stat = data.stat()
    with data.open("r+b") as handle:  # same size and inode, mtime put back: only a hash can tell
        handle.seek(stat.st_size // 3)
        byte = handle.read(1)
        handle.seek(stat.st_size // 3)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    args = (
        "generate",
        "--engines",
        engines_copy,
        "--precision",
        "fp32",
        "--prompt",
        "hi",
        "--max-tokens",
        "1",
    )
    assert run(*args).returncode == 0  # trusted: the stamp matches (see runtime/engine_files.py)
    result = run(*args, "--verify")
    assert result.returncode == 2 and "does not match its manifest hash" in result.stderr


def test_a_sharded_checkpoint_with_an_index_builds_and_generates_the_same(
    tmp_path, glm4v_tiny_model, glm4v_tiny_engines
):
    from transformers import Glm4vForConditionalGeneration

    sharded = shutil.copytree(glm4v_tiny_model, tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    Glm4vForConditionalGeneration.from_pretrained(glm4v_tiny_model).save_pretrained(
        sharded, max_shard_size="500KB"
    )
    assert len(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    engines = tmp_path / "engines"
    result = run(*build_args(sharded, engines, tmp_path / "work", ("fp32",)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert greedy(engines, "fp32") == greedy(glm4v_tiny_engines, "fp32")
