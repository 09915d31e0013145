"""`PowerMonitor`: polls the sensors, applies the policy, reports each switch.

Threading: `start()` takes a first reading on the caller's thread (so `snapshot()` has a decision
at once), then polls every `interval_s` on a daemon thread until `stop()`. `on_change(decision)`
runs on that thread, only for decisions whose `changed` is true: an asyncio caller hands it to its
loop with `loop.call_soon_threadsafe`. Without a thread, call `poll()` yourself (it blocks on sysfs
reads for well under a millisecond on a laptop; `await asyncio.to_thread(monitor.poll)` in a
coroutine), or run `await monitor.run()` as an asyncio task. `poll()`, `snapshot()`, `decision` and
`switches` may be called from any thread.

A switch is a decision that changes the precision, a cap or the pause: one INFO line on the
`runtime.power` logger says from what to what and why, and `switches` counts it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from runtime.power.policy import HIGHEST, Decision, PolicyState, PowerPolicy, resolve
from runtime.power.sensors import NO_SENSORS, PowerReading, read_power

log = logging.getLogger("runtime.power")

SNAPSHOT_KEYS = ("policy", "precision", "battery", "charging", "temperature_c", "throttled", "paused")


def describe(decision: Decision | None, precision: str | None = None) -> str:
    """'int8', 'int8 throttled (max_tokens 256, 2 running)', 'int8 paused', …"""
    if decision is None:
        return precision or "unknown"
    text = decision.precision
    if decision.paused:
        text += " paused"
    elif decision.throttled:
        text += f" throttled (max_tokens {decision.max_tokens_cap}, {decision.max_running_cap} running)"
    return text


class PowerMonitor:
    """Polls `read_power(root)` and keeps a `PolicyState` over the `built` precisions.

    current: the precision being served when the monitor starts (None: unknown; the first decision
    then counts as a switch)."""

    def __init__(
        self,
        root: Path,
        policy: PowerPolicy,
        built: Sequence[str],
        interval_s: float = 2.0,
        on_change: Callable[[Decision], None] | None = None,
        current: str | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.root = Path(root)
        self.policy = policy
        self.built = tuple(built)
        resolve(HIGHEST, self.built, downward=False)  # RuntimeUserError now if none is a known precision
        self.interval_s = interval_s
        self.on_change = on_change
        self._current = current
        self._state = PolicyState(policy, current)
        self._reading: PowerReading = NO_SENSORS
        self._switches = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def decision(self) -> Decision | None:
        return self._state.decision

    @property
    def switches(self) -> int:
        return self._switches

    def poll(self) -> Decision:
        """Read the sensors once, update the decision; log, count and report it if it changed."""
        reading = read_power(self.root)
        with self._lock:
            before = self._state.decision
            decision = self._state.update(reading, self.built)
            self._reading = reading
            if decision.changed:
                self._switches += 1
        if decision.changed:
            log.info(
                "power policy: %s -> %s: %s",
                describe(before, self._current),
                describe(decision),
                decision.reason,
            )
            if self.on_change is not None:
                self.on_change(decision)
        return decision

    def snapshot(self) -> dict:
        """For /health: exactly SNAPSHOT_KEYS (precision None before the first poll)."""
        with self._lock:
            decision, reading = self._state.decision, self._reading
        return {
            "policy": self.policy.source,
            "precision": decision.precision if decision else None,
            "battery": reading.battery_percent,
            "charging": reading.charging,
            "temperature_c": reading.temperature_c,
            "throttled": bool(decision and decision.throttled),
            "paused": bool(decision and decision.paused),
        }

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this PowerMonitor is already started")
        self.poll()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="power-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # a failing on_change must not end the monitoring; it is logged
                log.exception("power policy: polling failed; trying again in %.1f s", self.interval_s)

    async def run(self) -> None:
        """The asyncio form of start(): poll, then every interval_s, until cancelled."""
        while True:
            await asyncio.to_thread(self.poll)
            await asyncio.sleep(self.interval_s)
