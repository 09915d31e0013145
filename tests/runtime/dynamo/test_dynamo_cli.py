"""`serve --dynamo` checks before it starts anything (no Dynamo needed)."""

from __future__ import annotations

import pytest

from runtime.dynamo import compat
from runtime.dynamo.compat import DynamoMissingError, dynamo_missing_reason, require_dynamo
from runtime.dynamo.launcher import DynamoServeConfig
from tests.conftest import run_cli
from tests.test_cli import assert_user_error


def test_missing_dynamo_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(compat.importlib.util, "find_spec", lambda name: None)
    reason = dynamo_missing_reason()
    assert "ai-dynamo-runtime" in reason and "make setup" in reason and "--no-deps ai-dynamo==" in reason
    with pytest.raises(DynamoMissingError, match="pip install"):
        require_dynamo()


@pytest.mark.slow  # a CLI process each
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--api-key", "k"], "--api-key"),
        (["--jwt-jwks", "keys.json"], "--jwt-jwks"),
        (["--served-model-name", "a", "--served-model-name", "b"], "under one name"),
    ],
)
def test_gateway_only_options_are_refused(tmp_path, args, fragment):
    result = run_cli("serve", "--engines", tmp_path, "--dynamo", *args, check=False)
    assert_user_error(result, fragment)


def test_worker_threads_share_the_cores(monkeypatch, tmp_path):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert DynamoServeConfig(tmp_path, workers=3).worker_threads() == 2
    assert DynamoServeConfig(tmp_path, workers=16).worker_threads() == 1
    assert DynamoServeConfig(tmp_path, workers=2, threads=3).worker_threads() == 3
