"""The one place that knows which Dynamo this package was written against and how to get it."""

from __future__ import annotations

import importlib.util

from runtime.errors import RuntimeUserError

DYNAMO_VERSION = "1.6.1"
# ai-dynamo declares a dependency (aisimulate) that cannot be installed offline, so pip installs
# the two Dynamo wheels without their dependencies; the `dynamo` extra brings the real ones.
INSTALL_HINT = (
    "`make setup` installs it into .venv; elsewhere: pip install 'autoglm-trt[dynamo]' && "
    f"pip install --no-deps ai-dynamo=={DYNAMO_VERSION}"
)


class DynamoMissingError(RuntimeUserError):
    """NVIDIA Dynamo (the `ai-dynamo` and `ai-dynamo-runtime` packages) is not installed."""


def dynamo_missing_reason() -> str | None:
    """Why Dynamo cannot be used here (one line), or None when it can."""
    for module, package in (("dynamo._core", "ai-dynamo-runtime"), ("dynamo.frontend", "ai-dynamo")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"NVIDIA Dynamo is not installed (no {package} {DYNAMO_VERSION}): {INSTALL_HINT}"
    return None


def require_dynamo() -> None:
    reason = dynamo_missing_reason()
    if reason is not None:
        raise DynamoMissingError(reason)
