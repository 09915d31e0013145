"""TensorRT engines against the ONNX Runtime engines, and CUDA-graph replay against plain runs.

Needs TensorRT, cuda-python and an NVIDIA GPU; skipped otherwise (never run on the CPU machines
this project is developed on). Tolerances: fp32 plans max |Δlogits| ≤ 1e-3 + 1e-3·max|ref| (fp32
plans are built with BuilderFlag.TF32 cleared, tensorrt_compat.plan_precision; fused kernels still
reorder sums); fp16 plans ≤ 5e-2 + 2e-2·max|ref| (fp16 accumulation in fused attention). Greedy
tokens must match exactly between CUDA-graph replay and plain execution.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from runtime.engine_loader import load_engine
from runtime.manifest import Manifest
from tests.conftest import run_cli

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

if importlib.util.find_spec("tensorrt") is None:
    pytest.skip("TensorRT is not installed (pip install 'autoglm-trt[tensorrt]' on a GPU machine)",
                allow_module_level=True)  # fmt: skip
from runtime import cuda  # noqa: E402

try:
    if cuda.device_count() == 0:
        pytest.skip("no CUDA device", allow_module_level=True)
except cuda.CudaError as error:  # no driver, or one too old for cuda-python: say which
    pytest.skip(str(error), allow_module_level=True)

TOLERANCE = {"fp32": (1e-3, 1e-3), "fp16": (5e-2, 2e-2)}


@pytest.fixture(scope="module")
def trt_engines(tmp_path_factory, glm4v_tiny_model, glm4v_tiny_engines):
    out = tmp_path_factory.mktemp("trt") / "glm4v-tiny"
    work = glm4v_tiny_engines.parent.parent / "build" / glm4v_tiny_model.name
    run_cli("build", "--model", glm4v_tiny_model, "--out", out, "--work-dir", work, "--backend", "tensorrt",
            "--precision", "fp32", "--precision", "fp16")  # fmt: skip
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_component_matches_onnx_runtime(trt_engines, glm4v_tiny_engines, precision):
    trt_manifest, ort_manifest = Manifest.load(trt_engines), Manifest.load(glm4v_tiny_engines)
    atol, rtol = TOLERANCE[precision]
    rng = np.random.default_rng(1)
    for component in trt_manifest.engines:
        entry = trt_manifest.entry(component, precision)
        assert (trt_engines / f"{entry.file}.layers.json").is_file()
        assert ("TF32 off" in entry.report["precision_mode"]) == (precision == "fp32")
        feeds = _feeds(entry, trt_manifest, rng)
        names = [o.name for o in entry.outputs]
        got = load_engine(trt_manifest, trt_engines, component, precision).run(feeds, names)
        want = load_engine(ort_manifest, glm4v_tiny_engines, component, precision).run(feeds, names)
        for name, a, b in zip(names, got, want, strict=True):
            limit = atol + rtol * float(np.abs(b).max())
            assert float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()) <= limit, (
                component,
                name,
            )


def _feeds(entry, manifest, rng) -> dict[str, np.ndarray]:
    """Valid inputs at batch 2: token inputs within range, pools and media rows that mask out."""
    d, feeds = manifest.decoder, {}
    sizes = {"batch": 2, "seq": 4, "blocks": 1, "logit_positions": 1, "pool_blocks": 3, "media_tokens": 1}
    for spec in entry.inputs:
        shape = [dim if isinstance(dim, int) else sizes.get(dim, 8) for dim in spec.shape]
        if spec.name == "input_ids":
            feeds[spec.name] = rng.integers(0, d["vocab_size"], shape)
        elif spec.name in ("position_ids", "logit_index", "past_lens", "block_tables"):
            feeds[spec.name] = np.zeros(shape, np.int64)
        elif spec.name == "media_rows":
            feeds[spec.name] = np.full(shape, -1, np.int64)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def test_cuda_graph_replay_generates_the_same_tokens(trt_engines):
    from runtime.llm_engine import LLMEngine
    from runtime.sampling import SamplingParams

    prompts = ["The capital of France is", "Open the settings app and"]
    runs = []
    for graphs in (True, False):
        generator = LLMEngine(trt_engines, precision="fp16")
        generator.decoder.engine.profiles[-1].cuda_graphs = graphs  # profile 1 = decode
        completions = generator.generate(prompts, SamplingParams(max_tokens=24))
        runs.append([c.token_ids for c in completions])
        if graphs:
            assert generator.decoder.engine.profiles[-1].graphs, "no CUDA graph was captured"
    assert runs[0] == runs[1]


def test_scoring_matches_onnx_runtime(trt_engines, glm4v_tiny_engines):
    """Logits at every position of one sequence: more than the prefill profile's logits buffers
    first hold (one position per sequence), so they grow for this call."""
    from runtime.llm_engine import LLMEngine

    tokens = list(range(3, 3 + 40))
    trt = LLMEngine(trt_engines, precision="fp16")
    runner = trt.decoder.engine.profiles[0]
    first = runner.device["logits"].nbytes
    got = trt.score(tokens)
    want = LLMEngine(glm4v_tiny_engines, precision="fp16").score(tokens)
    assert runner.device["logits"].nbytes > first
    atol, rtol = TOLERANCE["fp16"]
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= atol + rtol * float(np.abs(want).max())


def test_int4_decoder_plan_takes_the_fp16_kv_pool(tmp_path_factory, glm4v_tiny_model, glm4v_tiny_engines):
    """int4 graphs are quantized from the fp32 export; the plan still reads and writes fp16 K/V."""
    from runtime.llm_engine import LLMEngine
    from runtime.sampling import SamplingParams

    out = tmp_path_factory.mktemp("trt-int4") / "glm4v-tiny"
    work = glm4v_tiny_engines.parent.parent / "build" / glm4v_tiny_model.name
    run_cli("build", "--model", glm4v_tiny_model, "--out", out, "--work-dir", work, "--backend", "tensorrt",
            "--precision", "int4", "--int4-method", "rtn")  # fmt: skip
    entry = Manifest.load(out).entry("text_decoder", "int4")
    assert entry.report["onnx"] == "text_decoder.int4.fp16kv.onnx"
    generator = LLMEngine(out, precision="int4")
    assert generator.decoder.engine.input_dtypes["key_cache.0"] == np.float16
    assert generator.decoder.pool.spec.dtype == np.float16
    (completion,) = generator.generate(["The capital of France is"], SamplingParams(max_tokens=8))
    assert len(completion.token_ids) > 0
