"""`serve --devices 0,1` with a text decoder in 2 pipeline stages: the Triton llm model runs the
stages (on the CPU here, no CUDA device) and answers what the single graph answers at fp32."""

from __future__ import annotations

import httpx
from openai import OpenAI

from runtime.llm_engine import LLMEngine
from runtime.sampling import SamplingParams
from runtime.server.background import start_background_server
from tests.conftest import run_cli
from tests.runtime.serving.conftest import stop
from tests.runtime.serving.test_openai_api import split

NO_THINKING = {"enable_thinking": False}


def test_staged_engines_serve_the_single_graphs_answers(glm4v_tiny_staged, glm4v_tiny_engines):
    args = ("--threads", "1", "--devices", "0,1", "--precision", "fp32")
    server = start_background_server(glm4v_tiny_staged, extra_args=args)
    single = LLMEngine(glm4v_tiny_engines, precision="fp32", threads=1)
    try:
        assert httpx.get(f"{server.root}/health", timeout=10).status_code == 200
        client = OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
        for question in ("What is the capital of France?", "Count to three."):
            messages = [{"role": "user", "content": question}]
            hf = single.tokenizer.hf
            rendered = hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **NO_THINKING
            )
            prompt = hf.encode(rendered, add_special_tokens=False)
            params = SamplingParams(max_tokens=16, stop_token_ids=single.tokenizer.stop_token_ids)
            ((ids, _),) = single.generate_ids([prompt], params)
            content, _ = split(single, prompt, ids)
            response = client.chat.completions.create(
                model=server.model, messages=messages, max_tokens=16, temperature=0, extra_body=NO_THINKING
            )
            assert response.usage.completion_tokens == len(ids)
            assert response.choices[0].message.content == content
    finally:
        stop(server)


def test_devices_with_replicas_is_refused(glm4v_tiny_staged):
    result = run_cli(
        "serve", "--engines", glm4v_tiny_staged, "--devices", "0,1", "--replicas", "2", check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--devices places one server's pipeline stages" in result.stderr
