"""Errors the builder raises for problems a user can fix.

The CLI turns any `BuildError` into one line on stderr and exit code 2, so the message must
name the value, what was expected, and how to fix it.
"""

from runtime.errors import UserError


class BuildError(UserError):
    """Base class: a user-fixable problem while creating, exporting or building a model."""


class ModelDirError(BuildError):
    """The model directory is missing, unreadable, or not a supported Hugging Face model."""


class UnknownPresetError(BuildError):
    """The requested model preset does not exist."""


class ExportError(BuildError):
    """Export failed, or the exported graph disagrees with PyTorch beyond tolerance."""


class BackendUnavailableError(BuildError):
    """The requested engine backend cannot run on this machine."""
