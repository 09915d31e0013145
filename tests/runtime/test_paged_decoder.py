"""PagedTextDecoder over a fused ONNX Runtime engine (the pool fed whole, GQA) against the same
steps over the portable graph it was built from (the pool fed per layer, plain ops)."""

from __future__ import annotations

import numpy as np

from runtime.engine_loader import load_engine
from runtime.engines.onnxruntime import OnnxRuntimeEngine
from runtime.kv import KVCacheManager
from runtime.manifest import Manifest
from runtime.paged_decoder import DecoderLimits, PagedTextDecoder, StepInput


def _decoder(engine, limits: DecoderLimits) -> PagedTextDecoder:
    return PagedTextDecoder(
        engine, limits, KVCacheManager(64, limits.block_size, enable_prefix_caching=False)
    )


def _steps(decoder: PagedTextDecoder, prompts: list[list[int]], chunks: list[list[int]]) -> list[np.ndarray]:
    """Prefill both prompts in one call, then a chunk of new tokens for both in one call (a batched
    prefill over a cached past), then one decode step for both."""
    ids = [f"r{i}" for i in range(len(prompts))]
    out = []
    for rid, prompt, chunk in zip(ids, prompts, chunks, strict=True):
        assert decoder.kv.allocate_slots(rid, len(prompt) + len(chunk) + 1) is not None
    out.append(decoder.step([StepInput(rid, p, 0) for rid, p in zip(ids, prompts, strict=True)]))
    out.append(
        decoder.step([StepInput(rid, c, len(p)) for rid, p, c in zip(ids, prompts, chunks, strict=True)])
    )
    out.append(
        decoder.step(
            [StepInput(rid, [7], len(p) + len(c)) for rid, p, c in zip(ids, prompts, chunks, strict=True)]
        )
    )
    return out


def test_fused_engine_steps_equal_the_portable_graph(glm4v_tiny_engines):
    manifest = Manifest.load(glm4v_tiny_engines)
    limits = DecoderLimits.from_manifest(manifest.decoder)
    fused = load_engine(manifest, glm4v_tiny_engines, "text_decoder", "fp32", threads=1)
    assert not fused.batched_prefill_with_past  # ORT's CPU GQA: such calls run one sequence at a time
    graph = glm4v_tiny_engines.parent.parent / "build" / "glm4v-tiny" / "text_decoder.fp32.onnx"
    portable = OnnxRuntimeEngine(graph, threads=1)
    assert portable.batched_prefill_with_past
    rng = np.random.default_rng(3)
    prompts = [rng.integers(10, 3000, n).tolist() for n in (21, 9)]
    chunks = [rng.integers(10, 3000, n).tolist() for n in (5, 3)]
    expected = _steps(_decoder(portable, limits), prompts, chunks)
    got = _steps(_decoder(fused, limits), prompts, chunks)
    for reference, logits in zip(expected, got, strict=True):
        np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
