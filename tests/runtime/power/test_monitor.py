"""PowerMonitor over a fake sysfs tree that the test changes; Prometheus metrics from its snapshot."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from prometheus_client import CollectorRegistry

from runtime.errors import RuntimeUserError
from runtime.power.metrics import PowerMetrics, publish
from runtime.power.monitor import SNAPSHOT_KEYS, PowerMonitor
from runtime.power.policy import PowerPolicy
from tests.runtime.power.sysfs_tree import battery, supply, thermal_zone

BUILT = ["fp32", "fp16", "int8", "int4"]


@pytest.fixture
def phone(tmp_path):
    battery(tmp_path, "battery", 90, "Discharging")
    supply(tmp_path, "usb", online=0, kind="USB")
    thermal_zone(tmp_path, 0, 40.0, "cpu-0-0")
    return tmp_path


def test_polls_count_switches_and_log_one_line_each(phone, caplog):
    caplog.set_level(logging.INFO, logger="runtime.power")
    monitor = PowerMonitor(phone, PowerPolicy(), BUILT, current="fp16")
    assert monitor.snapshot() == dict.fromkeys(SNAPSHOT_KEYS) | {
        "policy": "auto",
        "throttled": False,
        "paused": False,
    }
    assert monitor.poll().precision == "fp16" and monitor.switches == 0  # already serving fp16
    battery(phone, "battery", 50)
    assert monitor.poll().precision == "int8"
    thermal_zone(phone, 0, 70.0, "cpu-0-0")
    monitor.poll()
    monitor.poll()  # no change: no switch, no line
    assert monitor.switches == 2
    assert monitor.snapshot() == {"policy": "auto", "precision": "int8", "battery": 50.0, "charging": False,
                                  "temperature_c": 70.0, "throttled": True, "paused": False}  # fmt: skip
    lines = [r for r in caplog.records if r.name == "runtime.power"]
    assert [r.levelno for r in lines] == [logging.INFO, logging.INFO]
    assert lines[0].getMessage() == "power policy: fp16 -> int8: battery 50%: middle band → int8"
    assert (
        lines[1]
        .getMessage()
        .startswith(
            "power policy: int8 -> int8 throttled (max_tokens 256, 2 running): battery 50%: middle band → int8; 70.0 °C"
        )
    )
    supply(phone, "usb", online=1, kind="USB")
    thermal_zone(phone, 0, 85.0, "cpu-0-0")
    assert monitor.poll().paused
    assert monitor.snapshot()["precision"] == "fp32" and monitor.switches == 3
    assert "int8 throttled (max_tokens 256, 2 running) -> fp32 paused: on mains power → fp32" in caplog.text


def test_the_thread_reports_changes_until_stopped(phone):
    changes, seen = [], threading.Event()

    def on_change(decision):
        changes.append(decision.precision)
        seen.set()

    monitor = PowerMonitor(phone, PowerPolicy(), BUILT, interval_s=0.01, on_change=on_change)
    monitor.start()
    try:
        assert changes == ["fp16"]  # start() polled once on this thread: a decision at once
        seen.clear()
        battery(phone, "battery", 10)
        assert seen.wait(5)
        assert changes == ["fp16", "int4"] and monitor.snapshot()["precision"] == "int4"
        with pytest.raises(RuntimeError, match="already started"):
            monitor.start()
    finally:
        monitor.stop()
    switches = monitor.switches
    battery(phone, "battery", 90)
    threading.Event().wait(0.05)
    assert monitor.switches == switches == 2  # stopped: no more polls


def test_asyncio_task_form(phone):
    monitor = PowerMonitor(phone, PowerPolicy(), ["int8"], interval_s=0.01)

    async def main():
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert monitor.snapshot()["precision"] == "int8" and monitor.switches == 1


def test_no_sensors_and_nothing_built(tmp_path):
    monitor = PowerMonitor(tmp_path, PowerPolicy(), ["fp16", "int8"])
    assert monitor.poll().reason == "no sensors"
    assert monitor.snapshot() == {"policy": "auto", "precision": "fp16", "battery": None, "charging": None,
                                  "temperature_c": None, "throttled": False, "paused": False}  # fmt: skip
    with pytest.raises(RuntimeUserError, match="no engine at any of"):
        PowerMonitor(tmp_path, PowerPolicy(), ["bf16"])


def test_metrics_follow_the_snapshot(phone):
    registry = CollectorRegistry()
    metrics = PowerMetrics(registry, BUILT)
    monitor = PowerMonitor(phone, PowerPolicy(), BUILT)
    value = registry.get_sample_value

    monitor.poll()
    publish(metrics, monitor.snapshot(), monitor.switches)
    assert value("autoglm_power_battery_percent") == 90.0
    assert value("autoglm_power_temperature_celsius") == 40.0
    assert {p: value("autoglm_power_precision", {"precision": p}) for p in BUILT} == {
        "fp32": 0, "fp16": 1, "int8": 0, "int4": 0
    }  # fmt: skip
    assert value("autoglm_power_switches_total") == 1
    battery(phone, "battery", 20)
    thermal_zone(phone, 0, 90.0, "cpu-0-0")
    monitor.poll()
    publish(metrics, monitor.snapshot(), monitor.switches)
    publish(metrics, monitor.snapshot(), monitor.switches)  # a second scrape adds nothing
    assert value("autoglm_power_precision", {"precision": "int4"}) == 1
    assert value("autoglm_power_precision", {"precision": "fp16"}) == 0
    assert value("autoglm_power_throttled") == 1 and value("autoglm_power_paused") == 1
    assert value("autoglm_power_switches_total") == 2
    publish(metrics, {**monitor.snapshot(), "battery": None, "temperature_c": None})
    assert value("autoglm_power_battery_percent") != value("autoglm_power_battery_percent")  # NaN: unknown
