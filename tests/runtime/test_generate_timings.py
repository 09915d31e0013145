"""Timings of LLMEngine: each prompt of a batch is charged the engine steps it took part in."""

from __future__ import annotations

import pytest

from runtime.llm_engine import LLMEngine
from runtime.sampling import SamplingParams


def test_a_row_that_stops_early_is_charged_only_its_own_steps(glm4v_tiny_engines):
    generator = LLMEngine(glm4v_tiny_engines, "fp32", threads=1)
    a, b = [5, 6, 7], [8, 9]
    alone = generator.generate_timed([a], SamplingParams(max_tokens=8))[0]
    assert alone.timings.generated_tokens == 8 and alone.timings.batch == 1
    assert alone.timings.decode_tokens_per_s == pytest.approx(7 / (alone.timings.decode_ms / 1000), rel=1e-3)
    # Stop `a` at its third token (rows of a batch decode as they would alone); `b` goes on.
    stop = alone.token_ids[2]
    first = alone.token_ids.index(stop) + 1
    early, other = generator.generate_timed([a, b], SamplingParams(max_tokens=8, stop_token_ids=(stop,)))
    assert early.timings.generated_tokens == first and early.finish_reason == "stop"
    assert early.timings.batch == other.timings.batch == 2
    assert early.timings.prefill_ms == other.timings.prefill_ms  # one prefill call for both
    if other.timings.generated_tokens > first:
        assert early.timings.decode_ms < other.timings.decode_ms
    one = generator.generate_timed([[5]], SamplingParams(max_tokens=1))[0].timings
    assert one.generated_tokens == 1 and one.decode_ms == 0 and one.decode_tokens_per_s is None
    assert one.prefill_ms > 0 and one.load_s == round(generator.load_s, 4) > 0
