"""Errors the runtime raises for problems a user can fix (the CLI prints them, exit code 2)."""


class UserError(Exception):
    """Root of every user-fixable problem, in any layer: the CLI prints its message on one line
    and exits 2, with no traceback. The message says what is wrong and how to fix it."""


class RuntimeUserError(UserError):
    """Base class: a user-fixable problem when loading engines or generating."""


class EngineDirError(RuntimeUserError):
    """The engines directory is missing, has no manifest, or lacks a requested engine."""


class StaleEngineError(RuntimeUserError):
    """An engine file or the tools it was built with no longer match its manifest entry."""


class PromptTooLongError(RuntimeUserError):
    """The prompt (plus requested tokens) exceeds the maximum the engine was built for."""


class MediaInputError(RuntimeUserError):
    """An image or audio clip that cannot be used: unreadable, wrong size or format, too many."""


class MissingEncoderError(MediaInputError):
    """Images or audio were given to engines built without the encoder for them."""
