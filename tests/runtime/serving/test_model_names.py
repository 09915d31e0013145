"""`--served-model-name`: clients written for `model="autoglm-phone-9b"` work unchanged."""

from __future__ import annotations

import httpx
import pytest
from openai import NotFoundError, OpenAI

from tests.conftest import run_cli
from tests.runtime.serving.conftest import SERVED_NAMES
from tests.runtime.serving.test_openai_api import QUESTION


def test_every_served_name_answers_and_is_listed(glm4v_server):
    client = OpenAI(base_url=glm4v_server.base_url, api_key="EMPTY", max_retries=0)
    assert glm4v_server.model == SERVED_NAMES[0]
    assert [m.id for m in client.models.list()] == list(SERVED_NAMES)
    texts = set()
    for name in SERVED_NAMES:
        response = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=4, temperature=0)
        assert response.model == name  # the name the client asked for
        texts.add(response.choices[0].message.content)
        assert client.models.retrieve(name).id == name
    assert len(texts) == 1  # one model behind every name
    with pytest.raises(NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)
    assert all(name in caught.value.message for name in SERVED_NAMES)
    assert httpx.get(f"{glm4v_server.base_url}/models/gpt-4o").status_code == 404


def test_a_served_name_with_spaces_is_refused(glm4v_tiny_engines):
    result = run_cli("serve", "--engines", glm4v_tiny_engines, "--served-model-name", "auto glm", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --served-model-name 'auto glm'")
