"""What to serve given the battery and the heat: precision by battery band, throttling when warm,
admission paused when critical.

Defaults (the AutoGLM-Phone-9B energy guide: FP16 above 70 % battery, INT8 from 30 to 70 %, INT4
below 30 %, throttle above 65 °C):

  on mains power or charging   the highest precision built (fp32 if built, else fp16, int8, int4)
  battery ≥ 70 %               fp16 (the high band)
  30 % ≤ battery < 70 %        int8 (the middle band)
  battery < 30 %               int4 (the low band)
  no battery reading           as on mains; with no sensors at all the reason is "no sensors"
  above 65 °C (warm)           max_tokens capped at 256, at most 2 running sequences
  above 80 °C (critical)       admission paused (running sequences finish), caps as when warm

Hysteresis, so a battery hovering at a boundary or a sensor hovering at a threshold does not flap:
a lower band is taken as soon as the battery falls below its boundary, a higher band only once the
battery is `battery_margin` points above it (down to int8 below 70 %, back to fp16 at 75 %). A
throttle or pause starts above its threshold and ends only below the threshold − `cool_margin_c`
(throttled above 65 °C until below 60 °C; paused above 80 °C until below 75 °C).

Only built precisions are served (order by memory: int4 < int8 < fp16 < fp32). On battery, the
high band means the best quality the battery allows at half fp32's memory and energy: fp16, else
fp32, else the highest built. The middle and low bands exist to save energy: their precision if
built, else the next lower-memory one built, else the next higher. Mains (`mains_precision`, default
"highest") means fp32, else fp16, int8, int4; a named mains precision falls back upward first too.

`load_policy(spec)`: "off" → None (no policy), "auto" → these defaults, anything else is a TOML file
whose top-level keys override them (every key optional):

  high_percent = 70          # battery % at or above which the high band applies
  low_percent = 30           # battery % below which the low band applies
  battery_margin = 5         # points above a boundary before a higher band is taken again
  high_precision = "fp16"    # precision of each band: int4 | int8 | fp16 | fp32
  mid_precision = "int8"
  low_precision = "int4"
  mains_precision = "highest"  # on mains or charging: "highest" or a precision
  warm_c = 65                # °C above which generation is throttled
  critical_c = 80            # °C above which admission is paused
  cool_margin_c = 5          # °C below a threshold before its throttle or pause ends
  warm_max_tokens = 256      # max_tokens cap while throttled
  warm_max_running = 2       # running-sequences cap while throttled
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

from runtime.errors import RuntimeUserError
from runtime.power.sensors import PowerReading

PRECISIONS = ("int4", "int8", "fp16", "fp32")  # least memory and energy first
HIGHEST = "highest"
HIGH, MID, LOW = 2, 1, 0  # battery bands


@dataclass(frozen=True)
class PowerPolicy:
    """Thresholds and band precisions; `source` says where it came from ("auto" or a file)."""

    high_percent: float = 70.0
    low_percent: float = 30.0
    battery_margin: float = 5.0
    high_precision: str = "fp16"
    mid_precision: str = "int8"
    low_precision: str = "int4"
    mains_precision: str = HIGHEST
    warm_c: float = 65.0
    critical_c: float = 80.0
    cool_margin_c: float = 5.0
    warm_max_tokens: int = 256
    warm_max_running: int = 2
    source: str = field(default="auto", compare=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "source":
                _check_type(f.name, getattr(self, f.name), f.default)
                if isinstance(f.default, float):  # TOML's 70 and 70.0 read alike
                    object.__setattr__(self, f.name, float(getattr(self, f.name)))
        _check_range(
            "high_percent",
            self.high_percent,
            0 < self.high_percent <= 100,
            "a battery percentage, above 0 up to 100",
        )
        _check_range(
            "low_percent",
            self.low_percent,
            0 <= self.low_percent < self.high_percent,
            f"0 up to below high_percent ({self.high_percent:g})",
        )
        _check_range(
            "battery_margin",
            self.battery_margin,
            0 <= self.battery_margin <= 50,
            "percentage points, 0 to 50",
        )
        for name in ("high_precision", "mid_precision", "low_precision"):
            _check_choice(name, getattr(self, name), PRECISIONS)
        _check_choice("mains_precision", self.mains_precision, (HIGHEST, *PRECISIONS))
        _check_range("warm_c", self.warm_c, -50 <= self.warm_c <= 200, "°C, -50 to 200")
        _check_range(
            "critical_c",
            self.critical_c,
            self.warm_c < self.critical_c <= 200,
            f"°C above warm_c ({self.warm_c:g}), up to 200",
        )
        _check_range("cool_margin_c", self.cool_margin_c, 0 <= self.cool_margin_c <= 50, "°C, 0 to 50")
        _check_range(
            "warm_max_tokens", self.warm_max_tokens, self.warm_max_tokens >= 1, "a positive number of tokens"
        )
        _check_range(
            "warm_max_running",
            self.warm_max_running,
            self.warm_max_running >= 1,
            "a positive number of sequences",
        )


KEYS = tuple(f.name for f in fields(PowerPolicy) if f.name != "source")


def _check_type(name: str, value, default) -> None:
    if isinstance(default, str):
        ok, what = isinstance(value, str), "a string"
    elif isinstance(default, int):
        ok, what = isinstance(value, int) and not isinstance(value, bool), f"an integer, e.g. {default}"
    else:
        ok, what = (
            isinstance(value, int | float) and not isinstance(value, bool),
            f"a number, e.g. {default:g}",
        )
    if not ok:
        raise RuntimeUserError(f"power policy: {name} = {value!r} must be {what}")


def _check_range(name: str, value: float, ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeUserError(f"power policy: {name} = {value!r} is out of range: use {what}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RuntimeUserError(f"power policy: {name} = {value!r}: use one of {', '.join(allowed)}")


def load_policy(spec: str) -> PowerPolicy | None:
    """ "off" → None, "auto" → the defaults, else the path of a TOML file overriding any of KEYS."""
    if spec == "off":
        return None
    if spec == "auto":
        return PowerPolicy()
    path = Path(spec)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeUserError(
            f"power policy {spec!r}: no such file; give off, auto, or the path of a TOML file"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RuntimeUserError(f"power policy {path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise RuntimeUserError(f"power policy {path}: not valid TOML ({error})") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise RuntimeUserError(
            f"power policy {path}: unknown key {', '.join(unknown)}; the keys are {', '.join(KEYS)}"
        )
    try:
        return replace(PowerPolicy(), **data, source=str(path))
    except RuntimeUserError as error:
        raise RuntimeUserError(f"{path}: {error}") from None


class Decision(NamedTuple):
    """What to serve now. Caps are None when not throttled; `paused`: admit no new request (running
    ones continue). `changed`: precision, a cap or `paused` differs from the previous decision."""

    precision: str
    max_tokens_cap: int | None
    max_running_cap: int | None
    paused: bool
    reason: str
    changed: bool

    @property
    def throttled(self) -> bool:
        return self.max_tokens_cap is not None


def resolve(wanted: str, built, downward: bool) -> str:
    """The built precision nearest to `wanted` ("highest": the highest built). downward: try the
    lower-memory ones first, then the higher ones; else the higher ones first, then the lower."""
    known = [p for p in PRECISIONS if p in built]
    if not known:
        raise RuntimeUserError(
            f"no engine at any of {', '.join(PRECISIONS)} is built (built: {', '.join(built) or 'none'})"
        )
    if wanted == HIGHEST:
        return known[-1]
    if wanted in known:
        return wanted
    rank = PRECISIONS.index(wanted)
    lower = [p for p in known if PRECISIONS.index(p) < rank][::-1]  # the next lower first
    higher = [p for p in known if PRECISIONS.index(p) > rank]  # the next higher first
    return (lower + higher if downward else higher + lower)[0]


class PolicyState:
    """The current decision and the hysteresis state behind it. Not thread-safe: one owner updates
    it (PowerMonitor holds a lock around it).

    current: the precision served before the first update (None: unknown, so the first decision
    counts as a change)."""

    def __init__(self, policy: PowerPolicy, current: str | None = None) -> None:
        self.policy = policy
        self.decision: Decision | None = None
        self._previous = (current, None, None, False)
        self._band: int | None = None
        self._throttled = False
        self._paused = False

    def _band_of(self, percent: float) -> int:
        p = self.policy
        return HIGH if percent >= p.high_percent else MID if percent >= p.low_percent else LOW

    def _battery(self, percent: float) -> tuple[str, str]:
        """(wanted precision, why) for the battery band: down at once, up only past the margin."""
        p = self.policy
        band = now = self._band_of(percent)
        if self._band is not None and now > self._band:
            band = max(self._band, self._band_of(percent - p.battery_margin))
        self._band = band
        why = f"battery {percent:.3g}%: {('low', 'middle', 'high')[band]} band"
        if band < now:
            boundary = p.low_percent if band == LOW else p.high_percent
            why += f" until {boundary + p.battery_margin:g}%"
        return (p.low_precision, p.mid_precision, p.high_precision)[band], why

    def _thermal(self, temperature: float | None) -> str | None:
        p = self.policy
        if temperature is None:
            self._throttled = self._paused = False
            return None
        hot = (
            temperature > p.critical_c if not self._paused else temperature >= p.critical_c - p.cool_margin_c
        )
        warm = temperature > p.warm_c if not self._throttled else temperature >= p.warm_c - p.cool_margin_c
        self._paused, self._throttled = hot, warm or hot
        t = f"{temperature:.1f} °C"
        if self._paused:
            return (
                f"{t}: admission paused (pauses above {p.critical_c:g} °C, "
                f"resumes below {p.critical_c - p.cool_margin_c:g} °C)"
            )
        if self._throttled:
            return (
                f"{t}: max_tokens ≤ {p.warm_max_tokens}, ≤ {p.warm_max_running} running "
                f"(throttles above {p.warm_c:g} °C, ends below {p.warm_c - p.cool_margin_c:g} °C)"
            )
        return None

    def update(self, reading: PowerReading, built) -> Decision:
        """The decision for this reading; `built`: the precisions with engines (any order)."""
        p = self.policy
        wanted, why, downward = p.mains_precision, "no battery reading", False
        if reading.battery_percent is not None:
            band_wanted, band_why = self._battery(reading.battery_percent)
            if not (reading.on_mains or reading.charging):
                wanted, why, downward = band_wanted, band_why, self._band != HIGH
        else:
            self._band = None
        if reading.on_mains or reading.charging:
            why = "on mains power" if reading.on_mains else "charging"
        precision = resolve(wanted, built, downward)
        if precision != wanted and wanted != HIGHEST:
            why += f": {wanted} not built"
        heat = self._thermal(reading.temperature_c)
        reason = "no sensors" if reading.empty else f"{why} → {precision}" + (f"; {heat}" if heat else "")
        caps = (p.warm_max_tokens, p.warm_max_running) if self._throttled else (None, None)
        state = (precision, *caps, self._paused)
        self.decision = Decision(*state, reason, state != self._previous)
        self._previous = state
        return self.decision
