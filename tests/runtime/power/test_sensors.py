"""read_power over fake sysfs trees with Linux's layout: batteries, supplies, thermal zones, hwmon."""

from __future__ import annotations

import os

import pytest

from runtime.power.sensors import PowerReading, read_power
from tests.runtime.power.sysfs_tree import battery, hwmon, supply, thermal_zone


def test_laptop_on_battery_reports_capacity_supply_and_the_hottest_sensor(tmp_path):
    battery(tmp_path, "BAT0", 64, "Discharging")
    supply(tmp_path, "AC", online=0)
    thermal_zone(tmp_path, 0, 45.0, "acpitz")
    thermal_zone(tmp_path, 1, 71.5, "x86_pkg_temp")
    hwmon(tmp_path, 0, "nvme", {1: 38.85})
    assert read_power(tmp_path) == PowerReading(
        64.0, False, False, 71.5, "sysfs", "thermal_zone1 (x86_pkg_temp)"
    )


def test_hwmon_sensor_with_a_label_can_be_the_hottest(tmp_path):
    thermal_zone(tmp_path, 0, 40.0)
    hwmon(tmp_path, 2, "k10temp", {1: 83.25, 3: 60.0}, labels={1: "Tctl", 3: "Tccd1"})
    reading = read_power(tmp_path)
    assert reading.temperature_c == 83.25
    assert reading.temperature_sensor == "hwmon2/temp1_input (k10temp Tctl)"
    assert (reading.battery_percent, reading.charging, reading.on_mains) == (None, None, None)


@pytest.mark.parametrize(
    ("status", "charging"), [("Charging", True), ("Full", False), ("Not charging", False), ("Unknown", None)]
)
def test_charging_state_from_the_battery_status(tmp_path, status, charging):
    battery(tmp_path, "BAT1", 100 if status == "Full" else 55, status)
    supply(tmp_path, "ucsi-source-psy-USBC000:001", online=1, kind="USB")
    reading = read_power(tmp_path)
    assert (reading.charging, reading.on_mains) == (charging, True)


def test_two_batteries_weighted_by_full_energy_else_averaged(tmp_path):
    battery(tmp_path, "BAT0", 100, energy_full=20_000_000)
    battery(tmp_path, "BAT1", 40, energy_full=60_000_000)
    assert read_power(tmp_path).battery_percent == pytest.approx(55.0)  # (100·20 + 40·60) / 80
    (tmp_path / "class/power_supply/BAT1/energy_full").unlink()
    assert read_power(tmp_path).battery_percent == pytest.approx(70.0)


def test_peripheral_batteries_and_empty_bays_are_not_the_system_battery(tmp_path):
    battery(tmp_path, "hidpp_battery_0", 5, scope="Device")  # a wireless mouse
    battery(tmp_path, "BAT1", 0, present=0)  # an empty second bay
    battery(tmp_path, "BAT0", 90)
    assert read_power(tmp_path).battery_percent == 90.0


def test_unreadable_and_garbage_files_are_skipped(tmp_path):
    battery(tmp_path, "BAT0", "not-a-number", "Discharging")
    battery(tmp_path, "BAT1", 77, "Discharging")
    battery(tmp_path, "BAT2", 250, "Discharging")  # out of 0–100: garbage
    supply(tmp_path, "AC", online="")
    thermal_zone(tmp_path, 0, 52.0)
    thermal_zone(tmp_path, 1, -273.15, "iwlwifi_1")  # a sensor that is off reads absurdly
    thermal_zone(tmp_path, 2, 99.0, "disabled_zone", mode="disabled")
    zone3 = thermal_zone(tmp_path, 3, 0.0, "bad")
    (zone3 / "temp").unlink()
    (zone3 / "temp").mkdir()  # reading it fails like an I/O error does
    (thermal_zone(tmp_path, 4, 0.0, "binary") / "temp").write_bytes(b"\xff\xfe\x00")
    hwmon(tmp_path, 0, "acpitz", {1: 0.0})
    (tmp_path / "class/hwmon/hwmon0/temp1_input").write_text("garbage\n")
    assert read_power(tmp_path) == PowerReading(77.0, False, None, 52.0, "sysfs", "thermal_zone0 (acpitz)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_is_skipped(tmp_path):
    battery(tmp_path, "BAT0", 33)
    thermal_zone(tmp_path, 0, 70.0)
    (tmp_path / "class/thermal/thermal_zone0/temp").chmod(0)
    assert read_power(tmp_path) == PowerReading(33.0, False, None, None, "sysfs")


def test_a_server_without_sensors_reads_all_none(tmp_path):
    (tmp_path / "class/power_supply").mkdir(parents=True)
    (tmp_path / "class/thermal").mkdir(parents=True)
    for root in (tmp_path, tmp_path / "absent"):
        reading = read_power(root)
        assert reading == PowerReading(None, None, None, None, "none")
        assert reading.empty


def test_the_real_sys_never_raises():
    reading = read_power()  # this machine's /sys, with psutil for what it lacks
    assert isinstance(reading, PowerReading)
    assert reading.source in ("none", "sysfs", "psutil", "sysfs+psutil")
    assert reading.empty == (reading.source == "none")
