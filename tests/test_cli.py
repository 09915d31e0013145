"""The real console entry point: stdout holds results only; user errors are one line, exit 2."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


def assert_user_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_generate_prints_only_the_completion(glm4v_tiny_engines):
    plain = run_cli("generate", "--engines", glm4v_tiny_engines, "--prompt", "Hello", "--max-tokens", "8")
    as_json = run_cli(
        "generate", "--engines", glm4v_tiny_engines, "--prompt", "Hello", "--max-tokens", "8", "--json"
    )
    record = json.loads(as_json.stdout)
    assert {"prompt_token_ids", "token_ids", "text", "finish_reason"} <= record.keys()
    assert len(record["token_ids"]) == 8
    assert plain.stdout == record["text"] + "\n"


def test_generate_json_batch_is_one_object_per_prompt(glm4v_tiny_engines):
    result = run_cli(
        "generate",
        "--engines",
        glm4v_tiny_engines,
        "--prompt",
        "a",
        "--prompt",
        "b c d",
        "--max-tokens",
        "3",
        "--json",
        "--precision",
        "fp16",
    )
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["precision"] for r in records] == ["fp16", "fp16"]
    assert records[0]["prompt_token_ids"] != records[1]["prompt_token_ids"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ["model", "create", "--preset", "gpt-99", "--out", "{tmp}/m"],
            ["gpt-99", "glm4v-tiny", "smollm2-135m"],
        ),
        (["build", "--model", "{tmp}/missing", "--out", "{tmp}/e"], ["does not exist", "model create"]),
        (["build", "--model", "{tmp}/not-a-model", "--out", "{tmp}/e"], ["no config.json"]),
        (["export", "--model", "{tmp}/not-a-model", "--out", "{tmp}/b"], ["no config.json"]),
        (
            ["generate", "--engines", "{tmp}/not-a-model", "--prompt", "hi"],
            ["no manifest.json", "autoglm-trt build"],
        ),
        (["generate", "--engines", "{tmp}/missing", "--prompt", "hi"], ["does not exist"]),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, fragments):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "notes.txt").write_text("not a model")
    result = run_cli(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert_user_error(result, *fragments)


def test_prompt_longer_than_built_maximum(glm4v_tiny_engines):
    result = run_cli("generate", "--engines", glm4v_tiny_engines, "--prompt", "word " * 3000, check=False)
    assert_user_error(result, "at most 2048", "shorten the prompt")


def test_unknown_precision_names_what_was_built(glm4v_tiny_engines):
    result = run_cli(
        "generate", "--engines", glm4v_tiny_engines, "--prompt", "hi", "--precision", "int8", check=False
    )
    assert_user_error(result, "no int8", "built: fp16, fp32")


def test_tensorrt_backend_says_it_is_not_installed(glm4v_tiny_model, tmp_path):
    result = run_cli(
        "build",
        "--model",
        glm4v_tiny_model,
        "--out",
        tmp_path / "e",
        "--work-dir",
        tmp_path / "b",
        "--backend",
        "tensorrt",
        check=False,
    )
    assert_user_error(result, "TensorRT is not installed", "--backend onnxruntime")
    assert not (tmp_path / "e" / "manifest.json").exists()
