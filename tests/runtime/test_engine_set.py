"""The LLM service over several precisions (what a power policy switches between): a request asks
for a precision, runs on that engine start to end and reports it; the others' engines are loaded
on first use and unloaded once idle; a precision that is not built is a user error."""

from __future__ import annotations

import queue

import pytest

from runtime.llm_engine import LLMEngine
from runtime.sampling import SamplingParams
from runtime.server import engine_set
from runtime.server.llm_service import LLMService, ServiceConfig
from runtime.server.wire import ERROR_USER, GenerateRequest


class QueueSink:
    """Collects one request's output in this process (the Triton model's sink sends it instead)."""

    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()

    def send(self, delta, info) -> None:
        self.items.put(("delta", delta, info))

    def fail(self, message: str) -> None:
        self.items.put(("fail", message, {}))

    def is_cancelled(self) -> bool:
        return False

    def close(self) -> None:
        self.items.put(("closed", None, {}))

    def result(self, timeout: float = 120) -> tuple[list[int], dict]:
        tokens = []
        while True:
            kind, delta, info = self.items.get(timeout=timeout)
            if kind == "fail":
                raise AssertionError(delta)
            tokens += delta.token_ids
            if delta.finish_reason is not None:
                return tokens, info


def _ask(service: LLMService, precision: str | None, prompt: str = "Hello there") -> tuple[list[int], dict]:
    sink = QueueSink()
    service.submit(GenerateRequest(prompt=prompt, max_tokens=5, precision=precision), sink)
    return sink.result()


def test_requests_run_at_the_precision_they_ask_for(glm4v_tiny_engines, monkeypatch):
    service = LLMService(ServiceConfig(glm4v_tiny_engines, "fp32", threads=1))
    try:
        assert list(service.engines.engines) == ["fp32"]
        fp32, info = _ask(service, None)
        assert info["precision"] == "fp32"
        sinks = [QueueSink() for _ in range(4)]
        for i, sink in enumerate(sinks):  # interleaved precisions, in flight together
            service.submit(
                GenerateRequest(prompt="Hello there", max_tokens=5, precision=("fp16", "fp32")[i % 2]), sink
            )
        results = [sink.result() for sink in sinks]
        assert [info["precision"] for _, info in results] == ["fp16", "fp32", "fp16", "fp32"]
        reference = LLMEngine(glm4v_tiny_engines, "fp16", threads=1)
        prompt = reference.tokenizer.hf.encode("Hello there")
        ((fp16, _),) = reference.generate_ids(
            [prompt], SamplingParams(max_tokens=5, stop_token_ids=reference.tokenizer.stop_token_ids)
        )
        assert results[0][0] == fp16 and results[1][0] == fp32  # each on its own engine, unmixed
        assert set(service.engines.engines) == {"fp32", "fp16"}

        monkeypatch.setattr(engine_set, "IDLE_UNLOAD_S", 0.0)
        _ask(service, "fp32")  # fp32 is current again: the idle fp16 engine goes
        _ask(service, "fp32")
        assert list(service.engines.engines) == ["fp32"]
        stats = service.stats()
        assert stats.kv_blocks_free + stats.kv_blocks_used == stats.kv_blocks_total and stats.live == 0
    finally:
        service.close()


def test_a_precision_that_is_not_built_is_refused(glm4v_tiny_engines):
    service = LLMService(ServiceConfig(glm4v_tiny_engines, "fp32", threads=1))
    try:
        sink = QueueSink()
        service.submit(GenerateRequest(prompt="Hi", max_tokens=2, precision="int4"), sink)
        kind, message, _ = sink.items.get(timeout=60)
        assert kind == "fail" and message.startswith(ERROR_USER) and "not built" in message
    finally:
        service.close()


@pytest.mark.parametrize("precision", ["fp8", 16])
def test_the_wire_checks_the_precision(precision):
    with pytest.raises(ValueError, match="precision must be"):
        GenerateRequest(prompt="Hi", precision=precision).validate()
