"""`serve --devices 0,1` with a text decoder in 2 pipeline stages: the Triton llm model runs the
stages (on the CPU here, no CUDA device) and answers what the single graph answers."""

from __future__ import annotations

import httpx
from openai import OpenAI

from runtime.server.background import start_background_server
from tests.conftest import run_cli
from tests.runtime.serving.conftest import stop
from tests.runtime.serving.test_openai_api import reference, split

NO_THINKING = {"enable_thinking": False}


def test_staged_engines_serve_the_single_graphs_answers(glm4v_tiny_staged, glm4v_tiny_engines):
    server = start_background_server(glm4v_tiny_staged, extra_args=("--threads", "1", "--devices", "0,1"))
    try:
        assert httpx.get(f"{server.root}/health", timeout=10).status_code == 200
        client = OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
        for question in ("What is the capital of France?", "Count to three."):
            messages = [{"role": "user", "content": question}]
            generator, prompt, ids, _ = reference(
                glm4v_tiny_engines, messages, 16, add_generation_prompt=True, **NO_THINKING
            )
            content, _ = split(generator, prompt, ids)
            response = client.chat.completions.create(
                model=server.model, messages=messages, max_tokens=16, temperature=0, extra_body=NO_THINKING
            )
            assert response.usage.completion_tokens == len(ids)
            assert response.choices[0].message.content == content.replace("\ufffd", "")
    finally:
        stop(server)


def test_devices_with_replicas_is_refused(glm4v_tiny_staged):
    result = run_cli(
        "serve", "--engines", glm4v_tiny_staged, "--devices", "0,1", "--replicas", "2", check=False
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--devices places one server's pipeline stages" in result.stderr
