"""EnergyMeter and RaplCounters over fake powercap trees (the layout of /sys/class/powercap)."""

from __future__ import annotations

import os

import pytest

from runtime.power.energy import EnergyMeter, RaplCounters
from tests.runtime.power.sysfs_tree import rapl_zone


def _set(root, zone: str, energy_uj: int) -> None:
    (root / "class/powercap" / zone / "energy_uj").write_text(f"{energy_uj}\n")


def test_energy_of_the_packages_summed_over_blocks_with_wrap_around(tmp_path):
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000, max_uj=10_000_000)
    rapl_zone(tmp_path, "intel-rapl:0:0", "core", 0)  # inside package-0: not added
    rapl_zone(tmp_path, "intel-rapl:1", "package-1", 9_500_000, max_uj=10_000_000)
    with RaplCounters(tmp_path) as rapl:
        assert rapl.zones == ("package-0", "package-1") and rapl.note is None
        meter = EnergyMeter(rapl)
        with meter:
            _set(tmp_path, "intel-rapl:0", 3_000_000)  # +2 J
            _set(tmp_path, "intel-rapl:1", 500_000)  # wrapped: +1 J
            sum(range(200_000))
        with meter:
            _set(tmp_path, "intel-rapl:0", 3_250_000)  # +0.25 J
            _set(tmp_path, "intel-rapl:0:0", 99_000_000)
        assert meter.energy_j == pytest.approx(3.25) and meter.blocks == 2
        assert meter.cpu_s > 0 and meter.note is None
    assert meter.energy_j == pytest.approx(3.25)  # what was measured outlives the open counters


def test_psys_only_when_there_is_no_package_zone(tmp_path):
    rapl_zone(tmp_path, "intel-rapl:1", "psys", 5)
    assert RaplCounters(tmp_path).zones == ("psys",)
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 5)
    assert RaplCounters(tmp_path).zones == ("package-0",)  # psys would count the package twice


def test_no_rapl_gives_cpu_time_and_a_note(tmp_path):
    meter = EnergyMeter(root=tmp_path)
    with meter:
        sum(range(200_000))
    assert meter.energy_j is None and meter.cpu_s > 0
    assert "no RAPL package counters under" in meter.note and "does not expose them" in meter.note
    meter.close()


def test_garbage_counters_are_a_note_not_an_error(tmp_path):
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", "n/a")
    rapl = RaplCounters(tmp_path)
    assert not rapl.readable and "holds b'n/a', not a count of microjoules" in rapl.note
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 7)
    rapl = RaplCounters(tmp_path)
    meter = EnergyMeter(rapl)
    with meter:
        _set(tmp_path, "intel-rapl:0", "oops")  # fails mid-measurement: energy unknown from then on
    assert meter.energy_j is None and "not a count of microjoules" in meter.note


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_root_only_counters_say_so(tmp_path):
    zone = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 7)
    (zone / "energy_uj").chmod(0)  # as unreadable to us as root-only 0400 is to a user
    rapl = RaplCounters(tmp_path)
    assert not rapl.readable and "readable by root only" in rapl.note and "CVE-2020-8694" in rapl.note


def test_this_machine():
    meter = EnergyMeter()
    with meter:
        pass
    assert (meter.energy_j is None) == (meter.note is not None)
    meter.close()
