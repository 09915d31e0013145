"""Prometheus metrics of the power policy, on a registry the caller owns (the gateway's, or a test's).

    autoglm_power_battery_percent      battery charge, 0–100 (NaN: no battery reading)
    autoglm_power_temperature_celsius  hottest sensor (NaN: no temperature reading)
    autoglm_power_precision{precision} 1 for the precision the policy chose, 0 for the others
    autoglm_power_throttled            1 while max_tokens and running sequences are capped
    autoglm_power_paused               1 while admission is paused
    autoglm_power_switches_total       decisions that changed the precision, a cap or the pause

`publish(metrics, monitor.snapshot(), monitor.switches)` refreshes them, e.g. on each scrape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from runtime.power.policy import PRECISIONS


class PowerMetrics:
    """The metric objects; `precisions` are the label values the precision gauge starts with."""

    def __init__(self, registry: CollectorRegistry, precisions: Sequence[str] = PRECISIONS) -> None:
        r = registry
        self.battery = Gauge("autoglm_power_battery_percent", "Battery charge, percent", registry=r)
        self.temperature = Gauge("autoglm_power_temperature_celsius", "Hottest sensor, °C", registry=r)
        self.precision = Gauge(
            "autoglm_power_precision", "1 for the precision the power policy chose", ["precision"], registry=r
        )
        self.throttled = Gauge(
            "autoglm_power_throttled", "1 while generation is throttled (heat)", registry=r
        )
        self.paused = Gauge("autoglm_power_paused", "1 while admission is paused (heat)", registry=r)
        self.switches = Counter(
            "autoglm_power_switches",
            "Power-policy decisions that changed precision, caps or pause",
            registry=r,
        )
        self.published_switches = 0  # the monitor's count at the last publish
        self.precisions = set(precisions)  # label values of `precision` set so far
        for p in precisions:
            self.precision.labels(precision=p).set(0)


def _value(number: float | None) -> float:
    return math.nan if number is None else float(number)


def publish(metrics: PowerMetrics, snapshot: dict, switches: int | None = None) -> None:
    """Set the gauges from a PowerMonitor snapshot; `switches` (the monitor's running count)
    advances the counter by what is new since the last publish."""
    metrics.battery.set(_value(snapshot["battery"]))
    metrics.temperature.set(_value(snapshot["temperature_c"]))
    active = snapshot["precision"]
    if active is not None:
        metrics.precisions.add(active)
    for p in metrics.precisions:
        metrics.precision.labels(precision=p).set(1 if p == active else 0)
    metrics.throttled.set(int(bool(snapshot["throttled"])))
    metrics.paused.set(int(bool(snapshot["paused"])))
    if switches is not None and switches > metrics.published_switches:
        metrics.switches.inc(switches - metrics.published_switches)
        metrics.published_switches = switches
