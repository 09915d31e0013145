"""Per-stage progress lines with timings and peak memory, on stderr (stdout is kept for results)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
# Peaks of the stages still open, outermost first: resetting the kernel's high-water mark for an
# inner stage would otherwise lose what its outer stages reached before it.
_open_peaks: list[int] = []


def _peak_rss() -> int | None:
    """The process's peak RSS in bytes since the last reset (Linux VmHWM), None elsewhere."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the system between stages: glibc keeps them otherwise, and a
    later stage's peak would stand on an earlier stage's garbage (gigabytes with a 2 GB model)."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def _reset_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


@contextmanager
def stage(title: str) -> Iterator[None]:
    console.print(f"[bold]▶[/] {title}")
    start = time.perf_counter()
    before = _peak_rss()
    _release_freed_memory()
    if _open_peaks and before is not None:
        _open_peaks[-1] = max(_open_peaks[-1], before)
    tracked = before is not None and _reset_peak()
    _open_peaks.append(0)
    try:
        yield
    finally:
        reached = _open_peaks.pop()
    peak = max(reached, _peak_rss() or 0) if tracked else None
    if _open_peaks and peak is not None:
        _open_peaks[-1] = max(_open_peaks[-1], peak)
    memory = f", peak RSS {peak / 2**30:.2f} GiB" if peak else ""
    console.print(f"[green]✓[/] {title} [dim]({time.perf_counter() - start:.1f} s{memory})[/]")


def note(message: str) -> None:
    console.print(f"  {message}")
