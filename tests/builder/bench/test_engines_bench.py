"""`bench engines` end to end on the tiny model's real engines (a short run: few repeats, short prompts)."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from builder.bench.engines import EngineBenchConfig, run_engine_bench
from builder.bench.tables import print_engine_report
from builder.cli.bench_cmd import int_list
from runtime.errors import RuntimeUserError
from tests.conftest import CLI, run_cli
from tests.test_cli import assert_user_error

PNG = b"\x89PNG\r\n\x1a\n"
SHORT = (
    "--prompt-lengths",
    "8,16",
    "--batches",
    "1,2",
    "--repeats",
    "2",
    "--passages",
    "1",
    "--max-tokens",
    "32",
    "--context",
    "4",
    "--context",
    "20",
)


@pytest.fixture(scope="module")
def bench_run(glm4v_tiny_int8_engines, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-engines")
    result = run_cli("bench", "engines", "--engines", glm4v_tiny_int8_engines, "--precision", "int8", *SHORT,
                     "--threads", "1", "--json", out / "engines.json", "--plot", out / "engines.png")  # fmt: skip
    return result, json.loads((out / "engines.json").read_text()), out


@pytest.mark.slow
def test_results_cover_every_component_precision_and_case(bench_run):
    result, report, _ = bench_run
    keys = {"component", "precision", "phase", "batch", "seq", "context", "p50_ms", "p90_ms", "p99_ms",
            "tokens_per_s", "peak_rss_mb"}  # fmt: skip
    rows = report["results"]
    assert all(keys <= row.keys() for row in rows)
    cases = {(r["component"], r["phase"], r["batch"], r["seq"], r["context"], r["precision"]) for r in rows}
    expected = {("text_decoder", "prefill", 1, s, 0, p) for s in (8, 16) for p in ("fp32", "int8")}
    expected |= {
        ("text_decoder", "decode", b, 1, c, p) for b in (1, 2) for c in (4, 20) for p in ("fp32", "int8")
    }
    assert expected <= cases
    assert report["config"]["contexts"] == [4, 20]
    assert {r["precision"] for r in rows} == {"fp32", "int8"}  # fp32 joins as the reference; no fp16
    encoders = {(r["component"], r["batch"]) for r in rows if r["phase"] == "encode"}
    assert encoders == {(c, b) for c in ("vision_encoder", "audio_encoder") for b in (1, 2)}
    for r in rows:
        assert r["repeats"] == 2 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        tokens = r["batch"] * r["seq"]  # decode: one new token per sequence
        assert r["tokens_per_s"] == pytest.approx(tokens / (r["p50_ms"] / 1000), rel=1e-3)
        assert r["peak_rss_mb"] > 0
    assert not report["interrupted"]
    assert "text_decoder prefill b1 s8:" in result.stderr  # progress, with timings
    assert "int8/fp32" in result.stdout and "text_decoder decode b2 c20:" in result.stderr
    assert "ctx    20:" in result.stdout  # the roofline line of each context
    decode = [r for r in rows if r["phase"] == "decode"]
    assert (
        all(r["cpu_ms_per_token"] > 0 for r in decode) and "Decode cost per generated token" in result.stdout
    )


@pytest.mark.slow
def test_ratios_accuracy_sizes_and_roofline(bench_run, glm4v_tiny_int8_engines):
    _, report, _ = bench_run
    p50 = {
        (r["component"], r["phase"], r["batch"], r["seq"], r["context"], r["precision"]): r["p50_ms"]
        for r in report["results"]
    }
    for ratio in report["ratios"]:
        key = (ratio["component"], ratio["phase"], ratio["batch"], ratio["seq"], ratio["context"])
        assert ratio["int8/fp32"] == pytest.approx(p50[(*key, "int8")] / p50[(*key, "fp32")], abs=1e-4)
        assert ratio["int8/fp16"] is None
    accuracy = {(a["component"], a["precision"]): a for a in report["accuracy"]}
    assert accuracy.keys() == {
        ("text_decoder", "int8"),
        ("vision_encoder", "int8"),
        ("audio_encoder", "int8"),
    }
    text = accuracy[("text_decoder", "int8")]
    assert 0.9 < text["cosine"] <= 1 and 0 < text["top1"] <= 1 and text["perplexity_fp32"] > 1
    for component in ("vision_encoder", "audio_encoder"):
        assert (
            accuracy[(component, "int8")]["top1"] is None
            and 0.9 < accuracy[(component, "int8")]["cosine"] <= 1
        )
    for engine in report["engines"]:
        size = (glm4v_tiny_int8_engines / engine["file"]).stat().st_size
        assert engine["file_mb"] == pytest.approx(size / 1e6, abs=0.01) and engine["peak_rss_mb"] > 0
    roof = report["roofline"]
    decode_b1 = {
        (r["precision"], r["context"]): r["tokens_per_s"]
        for r in report["results"]
        if (r["phase"], r["batch"]) == ("decode", 1)
    }
    assert roof["bandwidth_gb_per_s"] > 0 and roof["contexts"] == [4, 20]
    assert {(r["precision"], r["context"]) for r in roof["cases"]} == decode_b1.keys()
    kv = {(r["precision"], r["context"]): r["kv_bytes"] for r in roof["cases"]}
    for precision in ("fp32", "int8"):
        assert kv[(precision, 20)] == 5 * kv[(precision, 4)] > 0  # K/V read grows with the context
    for r in roof["cases"]:
        assert r["measured_tokens_per_s"] == pytest.approx(
            decode_b1[(r["precision"], r["context"])], abs=0.01
        )
        assert r["bytes_per_token"] == r["weight_bytes"] + r["kv_bytes"]
        assert r["weight_bytes"] == r["weights_read_in_full_bytes"] + r["gather_row_bytes"]
        assert 0 < r["gather_row_bytes"] < r["gather_table_bytes"]  # glm4v-tiny's embedding is untied
        ceiling = roof["bandwidth_gb_per_s"] * 1e9 / r["bytes_per_token"]
        assert r["fraction"] == pytest.approx(r["measured_tokens_per_s"] / ceiling, rel=1e-2)


@pytest.mark.slow
def test_plot_and_markdown_report(bench_run):
    _, report, out = bench_run
    assert (out / "engines.png").read_bytes()[:8] == PNG
    run_cli("bench", "report", "--engines-json", out / "engines.json", "--engines-plot", out / "engines.png",
            "--out", out / "report" / "README.md")  # fmt: skip
    markdown = (out / "report" / "README.md").read_text()
    assert "## Engines: glm4v-tiny" in markdown and "### Roofline of batch-1 decode" in markdown
    assert "](../engines.png)" in markdown  # linked relative to the report
    first = report["results"][0]
    assert f"| {first['p50_ms']:.2f} | {first['p90_ms']:.2f} | {first['p99_ms']:.2f} |" in markdown


def test_decode_cpu_time_and_energy_per_token(glm4v_tiny_engines, capsys):
    cfg = EngineBenchConfig(glm4v_tiny_engines, components=("text_decoder",), prompt_lengths=(8,), batches=(1, 2),
                            contexts=(4,), repeats=3, threads=1, accuracy=False, memory=False, bandwidth_mb=16)  # fmt: skip
    report = run_engine_bench(cfg, log=print).as_dict()
    decode = [r for r in report["results"] if r["phase"] == "decode"]
    assert {(r["precision"], r["batch"]) for r in decode} == {
        (p, b) for p in ("fp32", "fp16") for b in (1, 2)
    }
    for row in report["results"]:
        if row["phase"] != "decode":
            assert row["cpu_ms_per_token"] is None and row["energy_mj_per_token"] is None
    energy = report["energy"]
    for row in decode:
        assert 0 < row["cpu_ms_per_token"] < 10_000
        assert (row["energy_mj_per_token"] is None) == (not energy["rapl_zones"])
        if row["energy_mj_per_token"] is not None:
            assert row["energy_mj_per_token"] > 0
    assert (energy["note"] is None) == bool(energy["rapl_zones"])  # null energy comes with a reason
    print_engine_report(report)
    out = capsys.readouterr().out
    assert "Decode cost per generated token" in out and "fp16 CPU ms" in out
    if energy["note"]:
        assert "decode energy per token: not measured" in out and "Energy per token not measured" in out


def test_user_errors_before_any_work(glm4v_tiny_engines):
    def bench(**options):
        run_engine_bench(EngineBenchConfig(glm4v_tiny_engines, **options), log=print)

    with pytest.raises(RuntimeUserError, match=r"--batches 64 exceeds .* up to 8"):
        bench(batches=(1, 64))
    with pytest.raises(RuntimeUserError, match="--prompt-lengths: 9000 tokens"):
        bench(prompt_lengths=(9000,))
    with pytest.raises(RuntimeUserError, match="no nope engine"):
        bench(components=("nope",))
    with pytest.raises(RuntimeUserError, match="no int8 text_decoder"):
        bench(precisions=("int8",))
    with pytest.raises(RuntimeUserError, match="positive integers"):
        int_list("1,0", "--batches")
    assert int_list("1, 2,4", "--batches") == (1, 2, 4)
    # The console entry point: one `error:` line, exit 2, no traceback.
    assert_user_error(run_cli("bench", "engines", "--engines", glm4v_tiny_engines, "--batches", "x", check=False),
                      "--batches", "comma-separated integers")  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_measured(glm4v_tiny_engines, tmp_path):
    out = tmp_path / "partial.json"
    command = [*CLI, "bench", "engines", "--engines", str(glm4v_tiny_engines), "--component", "text_decoder",
               "--prompt-lengths", "8,16", "--batches", "1", "--repeats", "1000", "--threads", "1", "--json", str(out)]  # fmt: skip
    # A shell's background job (`make test &`) ignores SIGINT, and a child would inherit that: give
    # the bench the default disposition, as a terminal's Ctrl-C finds it.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in process.stderr:  # after the first case, Ctrl-C lands in the second or later
            if "text_decoder prefill b1 s8:" in line:
                break
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    report = json.loads(out.read_text())
    assert report["interrupted"] is True
    first = [r for r in report["results"] if (r["phase"], r["seq"]) == ("prefill", 8)]
    assert {r["precision"] for r in first} == {"fp32", "fp16"} and all(r["repeats"] == 1000 for r in first)
    assert "interrupted" in stderr and "partial" in stdout
