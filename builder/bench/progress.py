"""Stage lines on stderr with the time since the benchmark started (stdout keeps the tables)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class StageLog:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f} s] {message}", file=self.stream, flush=True)
