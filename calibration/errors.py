"""Errors for calibration problems a user can fix (bad data directory, too few samples, no ops to
quantise). Subclasses of `BuildError`, so the CLI prints them as one `error:` line and exits 2."""

from builder.errors import BuildError


class CalibrationError(BuildError):
    """Calibration data is missing or unreadable, or the graph cannot be quantised as asked."""
