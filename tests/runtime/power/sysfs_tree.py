"""Fake sysfs trees in a temporary folder, with the files and layout Linux has under /sys."""

from __future__ import annotations

from pathlib import Path


def _write(folder: Path, **files: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (folder / name).write_text(f"{value}\n")
    return folder


def battery(
    root: Path, name: str = "BAT0", capacity: object = 80, status: str = "Discharging", **more
) -> Path:
    return _write(
        root / "class/power_supply" / name, type="Battery", capacity=capacity, status=status, **more
    )


def supply(root: Path, name: str = "AC", online: object = 0, kind: str = "Mains", **more) -> Path:
    return _write(root / "class/power_supply" / name, type=kind, online=online, **more)


def thermal_zone(root: Path, index: int, celsius: float, kind: str = "acpitz", **more) -> Path:
    return _write(root / f"class/thermal/thermal_zone{index}", temp=round(celsius * 1000), type=kind, **more)


def hwmon(
    root: Path, index: int, name: str, temps: dict[int, float], labels: dict[int, str] | None = None
) -> Path:
    folder = _write(root / f"class/hwmon/hwmon{index}", name=name)
    for n, celsius in temps.items():
        (folder / f"temp{n}_input").write_text(f"{round(celsius * 1000)}\n")
    for n, label in (labels or {}).items():
        (folder / f"temp{n}_label").write_text(f"{label}\n")
    return folder


def rapl_zone(root: Path, zone: str, name: str, energy_uj: int, max_uj: int = 262143328850) -> Path:
    return _write(root / "class/powercap" / zone, name=name, energy_uj=energy_uj, max_energy_range_uj=max_uj)
