"""The power policy applied to requests as they enter the gateway (runtime/power/ decides).

Each new request runs at the precision the policy chose when it was admitted (the llm model
keeps one engine per precision; a running request finishes on its own), with `max_tokens` capped
while the device is warm. While warm, at most `max_running_cap` generations run at once and the
others wait their turn; while critical, nothing new is admitted until it cools. Waiting requests
are still cancelled by a client that leaves. With no policy (`--power-policy off`) the gate lets
everything through unchanged.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from runtime.power.metrics import PowerMetrics, publish
from runtime.power.monitor import PowerMonitor
from runtime.server.wire import GenerateRequest

WAIT_S = 0.05  # how often a waiting request looks again (the policy polls every second or more)


class Admission:
    """The wire requests as admitted; `release()` (idempotent) when their streams have ended."""

    def __init__(self, wires: list[GenerateRequest], gate: PowerGate | None = None) -> None:
        self.wires, self._gate = wires, gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate.running -= len(self.wires)
            self._gate = None


class PowerGate:
    def __init__(self, monitor: PowerMonitor | None, metrics: PowerMetrics | None = None) -> None:
        self.monitor, self.metrics = monitor, metrics
        self.running = 0  # generations admitted and not yet ended

    async def admit(self, wires: list[GenerateRequest]) -> Admission:
        if self.monitor is None:
            return Admission(wires)
        while True:
            decision = self.monitor.decision
            busy = (
                decision.throttled and self.running and self.running + len(wires) > decision.max_running_cap
            )
            if not (decision.paused or busy):
                break
            await asyncio.sleep(WAIT_S)
        self.running += len(wires)
        cap = decision.max_tokens_cap if decision.throttled else None
        admitted = [
            replace(
                wire,
                precision=decision.precision,
                max_tokens=min(wire.max_tokens or cap, cap) if cap else wire.max_tokens,
            )
            for wire in wires
        ]
        return Admission(admitted, self)

    def snapshot(self) -> dict | None:
        return None if self.monitor is None else self.monitor.snapshot()

    def publish(self) -> None:
        if self.monitor is not None and self.metrics is not None:
            publish(self.metrics, self.monitor.snapshot(), self.monitor.switches)
