"""Per-stage progress lines with timings, on stderr (stdout is kept for results)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def stage(title: str) -> Iterator[None]:
    console.print(f"[bold]▶[/] {title}")
    start = time.perf_counter()
    yield
    console.print(f"[green]✓[/] {title} [dim]({time.perf_counter() - start:.1f} s)[/]")


def note(message: str) -> None:
    console.print(f"  {message}")
