"""CPU time and energy of measured blocks: process CPU time always, RAPL package energy where readable.

    with RaplCounters(root) as rapl:           # opens the counters once (or says why it cannot)
        meter = EnergyMeter(rapl)
        for _ in range(n):
            with meter:                        # accumulates over every block run inside it
                step()
        meter.cpu_s, meter.energy_j, meter.note, meter.blocks

CPU time is `time.process_time()`: every thread of this process, user + system, so an engine's
worker threads count. Energy is Intel/AMD RAPL through Linux powercap:

    class/powercap/intel-rapl:N/name                 package-N (or psys: the whole platform)
    class/powercap/intel-rapl:N/energy_uj            microjoules, wraps to 0 past ...
    class/powercap/intel-rapl:N/max_energy_range_uj  ... this; one wrap per block is accounted for

Package zones are summed (psys alone when a machine has no package zone: it already includes them);
sub-zones (intel-rapl:N:M: core, uncore, dram) are not added, they are inside their package. RAPL
counts the whole package, so other processes' work lands in it too: measure on an idle machine.
Where RAPL cannot be read (absent in most VMs, root-only on kernels with the CVE-2020-8694 fix)
`energy_j` is None and `note` says why.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

SYS = Path("/sys")
TOP_ZONE = re.compile(r"intel-rapl:\d+$")


class RaplCounters:
    """The package energy counters under `root`, kept open for cheap re-reads (pread at offset 0).

    zones: the zone names read ("package-0", …); empty when unreadable, and `note` says why."""

    def __init__(self, root: Path = SYS) -> None:
        self.zones: tuple[str, ...] = ()
        self.note: str | None = None
        self._fds: list[int] = []
        self._ranges: list[int] = []
        powercap = Path(root) / "class" / "powercap"
        found = sorted(p for p in powercap.glob("intel-rapl:*") if TOP_ZONE.match(p.name))
        named = [(p, _text(p / "name") or p.name) for p in found]
        chosen = [z for z in named if z[1].startswith("package")] or [z for z in named if z[1] == "psys"]
        if not chosen:
            self.note = (
                f"no RAPL package counters under {powercap} (intel-rapl:N absent: this CPU or VM "
                f"does not expose them)"
            )
            return
        try:
            for path, _ in chosen:
                self._open(path)
        except (OSError, ValueError) as error:
            self.close()
            self.note = _why(error)
            return
        self.zones = tuple(name for _, name in chosen)

    def _open(self, zone: Path) -> None:
        energy = zone / "energy_uj"
        top = int((zone / "max_energy_range_uj").read_text())
        fd = os.open(energy, os.O_RDONLY)
        self._fds.append(fd)
        self._ranges.append(top)
        _counter(fd, energy)  # readable now, or an error that says why

    @property
    def readable(self) -> bool:
        return bool(self._fds)

    def read(self) -> tuple[int, ...] | None:
        """Each zone's counter now (microjoules); None if they cannot be read (then `note` says why)."""
        if not self._fds:
            return None
        try:
            return tuple(_counter(fd) for fd in self._fds)
        except (OSError, ValueError) as error:
            self.note = _why(error)
            self.close()
            return None

    def joules(self, start: tuple[int, ...], end: tuple[int, ...]) -> float:
        """Energy between two reads, allowing one wrap of each counter."""
        total = 0
        for a, b, top in zip(start, end, self._ranges, strict=True):
            total += b - a if b >= a else top - a + b
        return total / 1e6

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> RaplCounters:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _counter(fd: int, path: Path | None = None) -> int:
    text = os.pread(fd, 32, 0).strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path or 'a RAPL counter'} holds {text!r}, not a count of microjoules") from None


def _why(error: Exception) -> str:
    if isinstance(error, PermissionError):
        return (
            f"RAPL counters exist but {error.filename} is readable by root only (Linux restricts "
            f"energy_uj since the CVE-2020-8694 fix); run as root or make it readable to measure energy"
        )
    return f"RAPL counters could not be read: {error}"


class EnergyMeter:
    """Process CPU time and RAPL energy, summed over every `with meter:` block (not reentrant).

    rapl: counters opened once and shared by many meters; None: open (and own) them under `root`.
    cpu_s: CPU seconds; energy_j: joules, None when RAPL is unreadable; note: why it is None;
    blocks: how many blocks were measured."""

    def __init__(self, rapl: RaplCounters | None = None, root: Path = SYS) -> None:
        self._owns = rapl is None
        self.rapl = RaplCounters(root) if rapl is None else rapl
        self.cpu_s = 0.0
        self._joules = 0.0
        self.blocks = 0
        self._energy_blocks = 0  # blocks whose energy was read at both ends
        self._cpu0 = 0.0
        self._energy0: tuple[int, ...] | None = None

    @property
    def energy_j(self) -> float | None:
        """None unless every block's energy was read."""
        return self._joules if self.blocks and self._energy_blocks == self.blocks else None

    @property
    def note(self) -> str | None:
        return self.rapl.note

    def __enter__(self) -> EnergyMeter:
        self._energy0 = self.rapl.read()
        self._cpu0 = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu_s += time.process_time() - self._cpu0
        end = self.rapl.read() if self._energy0 is not None else None
        if end is not None:
            self._joules += self.rapl.joules(self._energy0, end)
            self._energy_blocks += 1
        self.blocks += 1

    def close(self) -> None:
        """Close the RAPL counters this meter opened itself."""
        if self._owns:
            self.rapl.close()
