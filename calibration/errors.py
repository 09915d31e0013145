"""Errors for calibration problems a user can fix (bad data directory, too few samples, no ops to
quantise): the CLI prints them as one `error:` line and exits 2."""

from runtime.errors import UserError


class CalibrationError(UserError):
    """Calibration data is missing or unreadable, or the graph cannot be quantised as asked."""
