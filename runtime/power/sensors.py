"""Battery, mains and temperature: one `PowerReading` from Linux sysfs, or from psutil elsewhere.

Files read under `root` (default `/sys`; tests build the same layout in a temporary folder):

  class/power_supply/NAME/type       Battery | Mains | USB | USB_C | USB_PD | Wireless | …
  class/power_supply/NAME/scope      `Device` for a peripheral's battery (mouse, headset): skipped
  class/power_supply/NAME/present    0 for an empty battery bay: skipped
  class/power_supply/NAME/capacity   0–100 (Battery); several batteries are averaged, weighted by
                                     energy_full (or charge_full) when every one has it
  class/power_supply/NAME/status     Charging | Discharging | Full | Not charging | Unknown
  class/power_supply/NAME/online     1 | 0 (the external supplies: every type but Battery)
  class/thermal/thermal_zoneN/temp   millidegrees Celsius; `type` names the zone; `mode` disabled: skipped
  class/hwmon/hwmonN/tempM_input     millidegrees Celsius; `name` and `tempM_label` name it

The hottest plausible temperature (−50 to 200 °C) wins. A file that cannot be read (permission,
I/O error, the sensor is asleep) or holds garbage is skipped: `read_power` never raises.

psutil is asked only when `root` is the real `/sys` and sysfs had nothing for that part (other
operating systems; containers that hide /sys/class). A server with no battery and no sensors reads
as all None with `source="none"`: the policy then serves at full precision, unthrottled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYS = Path("/sys")
MIN_C, MAX_C = -50.0, 200.0  # outside: a disabled or broken sensor (some report -273 or 255)
CHARGING, NOT_CHARGING = {"Charging"}, {"Discharging", "Full", "Not charging"}


@dataclass(frozen=True)
class PowerReading:
    """One look at the power state. None: not known (no such sensor, or unreadable).

    battery_percent: 0–100, the system batteries (peripherals excluded)
    charging:        a system battery reports Charging (False: Discharging, Full or Not charging)
    on_mains:        an external supply (Mains, USB, Wireless, …) is online
    temperature_c:   the hottest sensor, °C; `temperature_sensor` says which, e.g.
                     "thermal_zone3 (x86_pkg_temp)" or "hwmon1/temp1_input (k10temp Tctl)"
    source:          "sysfs", "psutil", "sysfs+psutil" or "none" (no sensors at all)
    """

    battery_percent: float | None
    charging: bool | None
    on_mains: bool | None
    temperature_c: float | None
    source: str
    temperature_sensor: str | None = None

    @property
    def empty(self) -> bool:
        return (
            self.battery_percent is None
            and self.charging is None
            and self.on_mains is None
            and (self.temperature_c is None)
        )


NO_SENSORS = PowerReading(None, None, None, None, "none")


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):  # absent, permission, EIO/ENODATA from a sleeping sensor
        return None


def _number(path: Path) -> float | None:
    text = _text(path)
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _battery(root: Path) -> tuple[float | None, bool | None, bool | None]:
    """(percent, charging, on_mains) from class/power_supply."""
    capacities: list[tuple[float, float | None]] = []  # (percent, full energy or charge)
    statuses: list[str] = []
    online: list[bool] = []
    for supply in sorted((root / "class" / "power_supply").glob("*")):
        kind = _text(supply / "type")
        if kind is None or _text(supply / "scope") == "Device":
            continue
        if kind != "Battery":
            value = _number(supply / "online")
            if value is not None:
                online.append(value > 0)
            continue
        if _number(supply / "present") == 0:
            continue
        status = _text(supply / "status")
        if status in CHARGING | NOT_CHARGING:
            statuses.append(status)
        percent = _number(supply / "capacity")
        if percent is not None and 0 <= percent <= 100:
            full = _number(supply / "energy_full") or _number(supply / "charge_full")
            capacities.append((percent, full))
    percent = None
    if capacities:
        weights = [full for _, full in capacities]
        if all(weights):
            percent = sum(p * w for (p, _), w in zip(capacities, weights, strict=True)) / sum(weights)
        else:
            percent = sum(p for p, _ in capacities) / len(capacities)
    charging = any(s in CHARGING for s in statuses) if statuses else None
    return percent, charging, (any(online) if online else None)


def _hottest(root: Path) -> tuple[float | None, str | None]:
    """(°C, which sensor) of the hottest thermal zone or hwmon input."""
    found: list[tuple[float, str]] = []
    for zone in sorted((root / "class" / "thermal").glob("thermal_zone*")):
        if _text(zone / "mode") == "disabled":
            continue
        milli = _number(zone / "temp")
        if milli is not None:
            found.append((milli / 1000, f"{zone.name} ({_text(zone / 'type') or '?'})"))
    for chip in sorted((root / "class" / "hwmon").glob("hwmon*")):
        name = _text(chip / "name") or "?"
        for sensor in sorted(chip.glob("temp*_input")):
            milli = _number(sensor)
            if milli is not None:
                label = _text(chip / sensor.name.replace("_input", "_label"))
                found.append(
                    (milli / 1000, f"{chip.name}/{sensor.name} ({name}{' ' + label if label else ''})")
                )
    plausible = [(c, where) for c, where in found if MIN_C <= c <= MAX_C]
    if not plausible:
        return None, None
    return max(plausible, key=lambda item: item[0])


def _psutil_battery() -> tuple[float | None, bool | None]:
    import psutil

    try:
        battery = psutil.sensors_battery()
    except (OSError, RuntimeError, NotImplementedError):  # platform quirks; treated as no battery
        return None, None
    if battery is None:
        return None, None
    return float(battery.percent), battery.power_plugged


def _psutil_hottest() -> tuple[float | None, str | None]:
    import psutil

    reader = getattr(psutil, "sensors_temperatures", None)  # absent on macOS and Windows
    try:
        groups = reader() if reader else {}
    except (OSError, RuntimeError, NotImplementedError):
        return None, None
    found = [(t.current, f"{name} {t.label}".strip()) for name, temps in groups.items() for t in temps]
    plausible = [(c, where) for c, where in found if c is not None and MIN_C <= c <= MAX_C]
    return max(plausible, key=lambda item: item[0]) if plausible else (None, None)


def read_power(root: Path = SYS) -> PowerReading:
    """The power state now: sysfs under `root`, psutil for what sysfs lacks when `root` is /sys."""
    percent, charging, on_mains = _battery(root)
    temperature, sensor = _hottest(root)
    sources = []
    if percent is not None or charging is not None or on_mains is not None or temperature is not None:
        sources.append("sysfs")
    if Path(root) == SYS:
        asked = False
        if percent is None and on_mains is None:
            percent, on_mains = _psutil_battery()
            asked = percent is not None or on_mains is not None
        if temperature is None:
            temperature, sensor = _psutil_hottest()
            asked = asked or temperature is not None
        if asked:
            sources.append("psutil")
    return PowerReading(percent, charging, on_mains, temperature, "+".join(sources) or "none", sensor)
