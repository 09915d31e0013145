"""`bench serve`: per-level statistics from request timings, the prompt set, the ratios of compared
servers, and short real runs (our gateway; our gateway and Dynamo's frontend in one run)."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import numpy as np
import psutil
import pytest

from builder.bench.report import write_report
from builder.bench.serve import (
    PROMPTS,
    RequestTiming,
    ServeBenchConfig,
    Server,
    ServerSpec,
    compare_runs,
    comparison_table,
    level_result,
    load_prompts,
    messages_for,
    run_serve_bench,
)
from runtime.dynamo.compat import dynamo_missing_reason
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
    given_url = run_cli("bench", "serve", "--url", "http://127.0.0.1:9", "--dynamo-workers", "1", check=False)
    assert_user_error(given_url, "--dynamo-workers need --engines")
    with pytest.raises(RuntimeUserError, match="cannot reach the gateway"):
        run_serve_bench(ServeBenchConfig(url="http://127.0.0.1:9", concurrency=(1,)), log=print)


def _run(url: str, *levels: tuple[int, float, float]) -> dict:
    results = [{"concurrency": c, "output_tokens_per_s": tps, "ttft_p50_ms": ttft} for c, tps, ttft in levels]
    return {"url": url, "model": "m", "results": results, "interrupted": False}


def test_compared_runs_ratios_over_the_first_gateway_and_the_first_dynamo_run():
    reports = {
        ServerSpec(Server.GATEWAY, 1): _run("g1", (1, 10.0, 100.0), (4, 20.0, 200.0)),
        ServerSpec(Server.GATEWAY, 2): _run("g2", (1, 12.0, 90.0), (4, 36.0, 150.0)),
        ServerSpec(Server.DYNAMO, 1): _run("d1", (1, 11.0, 110.0), (4, 22.0, 250.0)),
        ServerSpec(Server.DYNAMO, 2): _run("d2", (1, 11.0, 55.0), (4, 44.0, 125.0)),
    }
    report = compare_runs(reports)
    assert [r["name"] for r in report["runs"]] == ["gateway x1", "gateway x2", "dynamo x1", "dynamo x2"]
    assert report["url"] == "g1" and report["results"] == reports[ServerSpec(Server.GATEWAY, 1)]["results"]
    got = {
        (r["run"], r["over"], r["concurrency"]): (r["throughput_ratio"], r["ttft_p50_ratio"])
        for r in report["ratios"]
    }
    assert got == {
        ("gateway x2", "gateway x1", 1): (1.2, 0.9), ("gateway x2", "gateway x1", 4): (1.8, 0.75),
        ("dynamo x1", "gateway x1", 1): (1.1, 1.1), ("dynamo x1", "gateway x1", 4): (1.1, 1.25),
        ("dynamo x2", "gateway x1", 1): (1.1, 0.55), ("dynamo x2", "gateway x1", 4): (2.2, 0.625),
        ("dynamo x2", "dynamo x1", 1): (1.0, 0.5), ("dynamo x2", "dynamo x1", 4): (2.0, 0.5),
    }  # fmt: skip
    header, rows = comparison_table(report)
    assert header[4:] == [
        "tok/s vs gateway x1",
        "TTFT vs gateway x1",
        "tok/s vs dynamo x1",
        "TTFT vs dynamo x1",
    ]
    assert rows[3] == ["1", "dynamo x2", "11.0", "55.0", "1.10", "0.55", "1.00", "0.50"]
    assert rows[1] == ["1", "gateway x2", "12.0", "90.0", "1.20", "0.90", "—", "—"]


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        return sock.connect_ex((parts.hostname, parts.port)) == 0


@pytest.mark.slow
@pytest.mark.skipif(dynamo_missing_reason() is not None, reason=str(dynamo_missing_reason()))
def test_serve_bench_compares_our_gateway_with_dynamo(glm4v_tiny_engines, tmp_path):
    """One run: our gateway with 1 replica, then Dynamo's frontend with 1 of our workers, the same
    prompts and levels; both stopped afterwards, and the ratios in the JSON, the table and the report."""
    before = _servers(glm4v_tiny_engines)
    result = run_cli("bench", "serve", "--engines", glm4v_tiny_engines, "--replicas", "1", "--dynamo-workers", "1",
                     "--concurrency", "1,2", "--requests", "2", "--max-tokens", "4", "--threads", "1",
                     "--json", tmp_path / "serve.json")  # fmt: skip
    report = json.loads((tmp_path / "serve.json").read_text())
    assert not report["interrupted"] and report["model"] == "glm4v-tiny"
    assert [(r["name"], r["server"], r["instances"]) for r in report["runs"]] == [
        ("gateway x1", "gateway", 1), ("dynamo x1", "dynamo", 1)]  # fmt: skip
    for run in report["runs"]:
        assert [level["concurrency"] for level in run["results"]] == [1, 2]
        for level in run["results"]:
            assert level["errors"] == 0, (run["name"], level["error_samples"])
            assert level["output_tokens_per_s"] > 0 and level["ttft_p50_ms"] > 0
        assert not _listening(run["url"]), f"{run['name']} still answers at {run['url']}"
    assert _servers(glm4v_tiny_engines) == before
    workers = [p for p in psutil.process_iter(["cmdline"]) if "runtime.dynamo.worker" in (p.info["cmdline"] or [])
               and str(glm4v_tiny_engines) in p.info["cmdline"]]  # fmt: skip
    assert not workers, "a Dynamo worker outlived the bench"
    ratios = [(r["run"], r["over"], r["concurrency"]) for r in report["ratios"]]
    assert ratios == [("dynamo x1", "gateway x1", 1), ("dynamo x1", "gateway x1", 2)]
    assert all(r["throughput_ratio"] > 0 and r["ttft_p50_ratio"] > 0 for r in report["ratios"])
    assert "tok/s vs gateway x1" in result.stdout and "dynamo x1" in result.stdout
    write_report(tmp_path / "report.md", None, report)
    markdown = (tmp_path / "report.md").read_text()
    assert "### dynamo x1" in markdown and "| 2 | dynamo x1 |" in markdown
