"""`generate` reports measured speed: a `timings` object per prompt with --json, one line per prompt
on stderr otherwise (stdout keeps only the completions)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import run_cli

FIELDS = {"load_s", "batch", "prompt_tokens", "prefill_ms", "prefill_tokens_per_s", "generated_tokens",
          "decode_ms", "decode_tokens_per_s"}  # fmt: skip


def test_json_timings_are_positive_and_consistent(glm4v_tiny_engines):
    result = run_cli("generate", "--engines", glm4v_tiny_engines, "--prompt", "Hello there", "--prompt", "a",
                     "--max-tokens", "6", "--json")  # fmt: skip
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2
    for record in records:
        t = record["timings"]
        assert t.keys() == FIELDS
        assert t["load_s"] > 0 and t["prefill_ms"] > 0 and t["decode_ms"] > 0 and t["batch"] == 2
        assert t["prompt_tokens"] == len(record["prompt_token_ids"])
        assert t["generated_tokens"] == len(record["token_ids"]) == 6
        assert t["prefill_tokens_per_s"] == pytest.approx(
            t["prompt_tokens"] / (t["prefill_ms"] / 1000), rel=1e-3
        )
        assert t["decode_tokens_per_s"] == pytest.approx(5 / (t["decode_ms"] / 1000), rel=1e-3)
    # One batch: both prompts share the prefill call and, generating as many tokens, every decode step.
    assert records[0]["timings"]["prefill_ms"] == records[1]["timings"]["prefill_ms"]
    assert records[0]["timings"]["decode_ms"] == records[1]["timings"]["decode_ms"]
    assert records[0]["timings"]["load_s"] == records[1]["timings"]["load_s"]


def test_plain_output_has_completions_on_stdout_and_timings_on_stderr(glm4v_tiny_engines):
    plain = run_cli("generate", "--engines", glm4v_tiny_engines, "--prompt", "Hello", "--max-tokens", "4")
    as_json = run_cli("generate", "--engines", glm4v_tiny_engines, "--prompt", "Hello", "--max-tokens", "4",
                      "--json")  # fmt: skip
    assert plain.stdout == json.loads(as_json.stdout)["text"] + "\n"  # nothing but the completion
    lines = [line for line in plain.stderr.splitlines() if line.startswith("timings (prompt 1):")]
    assert len(lines) == 1, plain.stderr
    pattern = (r"load [\d.]+ s, prefill \d+ tokens in [\d.]+ ms \([\d.]+ tok/s\), decode 3 tokens in [\d.]+ ms "
               r"\([\d.]+ tok/s\), 4 generated, batch 1")  # fmt: skip
    assert re.search(pattern, lines[0]), lines[0]
