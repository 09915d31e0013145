"""LLMEngine: the one object that loads engines, sizes the pool and owns the scheduler; offline
generation runs through that scheduler and leaves the pool as it found it."""

from __future__ import annotations

import pytest

from runtime.errors import PromptTooLongError
from runtime.llm_engine import LLMEngine
from runtime.sampling import SamplingParams
from runtime.server.llm_service import LLMService, ServiceConfig


@pytest.fixture(scope="module")
def engine(glm4v_tiny_engines) -> LLMEngine:
    return LLMEngine(glm4v_tiny_engines, "fp32", threads=1)


def _idle(engine: LLMEngine) -> bool:
    kv = engine.kv
    return not engine.has_work and kv.num_free_blocks == kv.num_blocks - 1


def test_generate_runs_the_scheduler_and_returns_every_block(engine):
    prompts = [[5 + i, 6, 7] for i in range(engine.limits.max_batch + 3)]
    results = engine.generate_timed(prompts, SamplingParams(max_tokens=3))
    assert [len(r.token_ids) for r in results] == [3] * len(prompts)
    # The first max_batch shared their prefill; the rest were admitted as slots freed.
    assert [r.timings.batch for r in results[: engine.limits.max_batch]] == [
        engine.limits.max_batch
    ] * engine.limits.max_batch
    assert all(r.timings.batch < engine.limits.max_batch for r in results[engine.limits.max_batch :])
    assert _idle(engine)


def test_a_prompt_that_can_never_run_leaves_nothing_behind(engine):
    too_long = list(range(1, engine.limits.max_seq_len + 1))
    with pytest.raises(PromptTooLongError, match="rebuild with a larger --max-seq-len"):
        engine.generate_ids([[5, 6], too_long], SamplingParams(max_tokens=2))
    assert _idle(engine)
    assert engine.generate_ids([[5, 6]], SamplingParams(max_tokens=2))[0][1] == "length"


def test_the_service_drives_an_engine_sized_by_the_manifest(glm4v_tiny_engines):
    service = LLMService(ServiceConfig(glm4v_tiny_engines, "fp32", threads=1))
    try:
        assert isinstance(service.engine, LLMEngine)
        assert service.scheduler is service.engine.scheduler and service.kv is service.engine.kv
        assert service.scheduler.config.max_batch == service.limits.max_batch  # not a constant
        assert service.kv.enable_prefix_caching  # the server reuses earlier turns' blocks
    finally:
        service.close()
