"""`bench serve`: per-level statistics from request timings, the prompt set, and a short real run."""

from __future__ import annotations

import json

import numpy as np
import psutil
import pytest

from builder.bench.serve import (
    PROMPTS,
    RequestTiming,
    ServeBenchConfig,
    level_result,
    load_prompts,
    messages_for,
    run_serve_bench,
)
from runtime.errors import RuntimeUserError
from tests.conftest import run_cli
from tests.test_cli import assert_user_error

PNG = b"\x89PNG\r\n\x1a\n"


def test_level_statistics_from_request_timings():
    timings = [
        RequestTiming(ttft_s=0.10, e2e_s=0.50, output_tokens=5, chunk_times_s=[0.10, 0.20, 0.30, 0.40, 0.50]),
        RequestTiming(ttft_s=0.20, e2e_s=0.80, output_tokens=4, chunk_times_s=[0.20, 0.40, 0.60, 0.80]),
        RequestTiming(ttft_s=0.30, e2e_s=0.30, output_tokens=1, chunk_times_s=[0.30]),
    ]
    out = level_result(2, timings, ["APIError: boom"], wall_s=2.0)
    assert out["requests"] == 4 and out["errors"] == 1 and out["output_tokens"] == 10
    assert out["requests_per_s"] == pytest.approx(3 / 2.0) and out["output_tokens_per_s"] == pytest.approx(
        5.0
    )
    assert out["ttft_p50_ms"] == pytest.approx(200.0) and out["ttft_p90_ms"] == pytest.approx(
        np.percentile([100, 200, 300], 90)
    )
    # TPOT: (e2e − ttft) / (tokens − 1), only for requests with a second token: 100 ms and 200 ms
    assert out["tpot_p50_ms"] == pytest.approx(150.0)
    assert out["itl_p50_ms"] == pytest.approx(np.percentile([100] * 4 + [200] * 3, 50))
    assert out["e2e_p99_ms"] == pytest.approx(np.percentile([500, 800, 300], 99))


def test_shipped_prompts_and_bad_prompt_files(tmp_path):
    system, prompts = load_prompts(None)
    assert PROMPTS.exists() and system and len(prompts) >= 8
    messages = messages_for(system, prompts[0], ["data:image/png;base64,AAAA"])
    assert messages[0]["role"] == "system" and messages[1]["content"][0]["type"] == "image_url"
    bad = tmp_path / "bad.json"
    bad.write_text('{"questions": []}')
    with pytest.raises(RuntimeUserError, match="not a prompt set"):
        load_prompts(bad)


def _servers(engines) -> set[int]:
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and str(engines) in cmdline:
            found.add(process.info["pid"])
    return found


@pytest.mark.slow
def test_serve_bench_starts_a_server_measures_and_stops_it(glm4v_tiny_engines, tmp_path):
    before = _servers(glm4v_tiny_engines)  # e.g. the serving tests' own server
    result = run_cli("bench", "serve", "--engines", glm4v_tiny_engines, "--concurrency", "1,2", "--requests", "2",
                     "--max-tokens", "4", "--threads", "1", "--json", tmp_path / "serve.json", "--plot",
                     tmp_path / "serve.png")  # fmt: skip
    assert _servers(glm4v_tiny_engines) == before
    report = json.loads((tmp_path / "serve.json").read_text())
    assert report["model"] == "glm4v-tiny" and not report["interrupted"]
    assert [r["concurrency"] for r in report["results"]] == [1, 2]
    for level in report["results"]:
        assert level["errors"] == 0, level["error_samples"]
        assert level["requests"] == max(2, 2 * level["concurrency"])
        assert 0 < level["output_tokens"] <= 4 * level["requests"]
        assert level["output_tokens_per_s"] == pytest.approx(
            level["output_tokens"] / level["wall_s"], rel=1e-2
        )
        for metric in ("ttft", "tpot", "itl", "e2e"):
            assert level[f"{metric}_p50_ms"] <= level[f"{metric}_p90_ms"] <= level[f"{metric}_p99_ms"]
        assert level["ttft_p50_ms"] <= level["e2e_p50_ms"]
    assert (tmp_path / "serve.png").read_bytes()[:8] == PNG
    assert "TTFT p50" in result.stdout and "concurrency 2:" in result.stderr


def test_serve_needs_one_target():
    assert_user_error(run_cli("bench", "serve", check=False), "--url", "--engines")
    with pytest.raises(RuntimeUserError, match="cannot reach the gateway"):
        run_serve_bench(ServeBenchConfig(url="http://127.0.0.1:9", concurrency=(1,)), log=print)
