"""PowerPolicy / PolicyState: battery bands with hysteresis, heat, unbuilt precisions, TOML files."""

from __future__ import annotations

import pytest

from runtime.errors import RuntimeUserError
from runtime.power.policy import KEYS, PolicyState, PowerPolicy, load_policy, resolve
from runtime.power.sensors import NO_SENSORS, PowerReading

ALL = ["fp32", "fp16", "int8", "int4"]


def on_battery(percent: float, temperature: float | None = None) -> PowerReading:
    return PowerReading(percent, False, False, temperature, "sysfs")


def hot(temperature: float) -> PowerReading:
    return PowerReading(None, None, None, temperature, "sysfs")


def walk(state: PolicyState, percents, built=ALL) -> list[tuple[float, str]]:
    """(percent, precision) at each switch along the walk."""
    switches = []
    for percent in percents:
        decision = state.update(on_battery(percent), built)
        if decision.changed:
            switches.append((percent, decision.precision))
    return switches


def test_battery_walk_down_and_up_switches_at_the_bands_with_hysteresis():
    state = PolicyState(PowerPolicy())
    assert walk(state, range(100, 9, -1)) == [(100, "fp16"), (69, "int8"), (29, "int4")]  # down at once
    assert walk(state, range(10, 101)) == [(35, "int8"), (75, "fp16")]  # up 5 points past each boundary
    assert state.decision.reason == "battery 100%: high band → fp16"


def test_a_battery_hovering_at_a_boundary_does_not_flap():
    state = PolicyState(PowerPolicy(), current="fp16")
    assert walk(state, [72, 70, 69.5, 70, 71, 69, 72, 74.9]) == [(69.5, "int8")]
    assert state.decision.reason == "battery 74.9%: middle band until 75% → int8"
    assert walk(state, [75]) == [(75, "fp16")]
    assert walk(state, [71, 70]) == []  # still in the high band: no change, no switch
    assert not state.decision.changed


def test_margin_zero_switches_both_ways_at_the_boundaries():
    state = PolicyState(PowerPolicy(battery_margin=0))
    assert walk(state, [80, 69, 70, 29, 30]) == [
        (80, "fp16"),
        (69, "int8"),
        (70, "fp16"),
        (29, "int4"),
        (30, "int8"),
    ]


def test_heat_throttles_above_warm_and_pauses_above_critical_until_cooler_by_the_margin():
    state = PolicyState(PowerPolicy(), current="fp32")
    steps = [
        (60.0, "fp32", None, None, False, False),
        (65.0, "fp32", None, None, False, False),  # not above 65
        (66.0, "fp32", 256, 2, False, True),
        (61.0, "fp32", 256, 2, False, False),  # held until below 60
        (59.9, "fp32", None, None, False, True),
        (81.0, "fp32", 256, 2, True, True),  # paused, and the caps hold for what runs
        (76.0, "fp32", 256, 2, True, False),  # held until below 75
        (74.9, "fp32", 256, 2, False, True),  # resumed, still warm
        (55.0, "fp32", None, None, False, True),
    ]
    for temperature, precision, max_tokens, running, paused, changed in steps:
        d = state.update(hot(temperature), ALL)
        assert (d.precision, d.max_tokens_cap, d.max_running_cap, d.paused, d.changed) == (
            precision, max_tokens, running, paused, changed
        ), temperature  # fmt: skip
    state.update(hot(70.0), ALL)
    assert state.decision.throttled and state.decision.reason == (
        "no battery reading → fp32; 70.0 °C: max_tokens ≤ 256, ≤ 2 running "
        "(throttles above 65 °C, ends below 60 °C)"
    )
    assert "admission paused" in state.update(hot(90.0), ALL).reason


def test_heat_and_battery_combine():
    state = PolicyState(PowerPolicy(warm_c=50, critical_c=60, warm_max_tokens=64, warm_max_running=1))
    d = state.update(on_battery(40, 55.0), ALL)
    assert (d.precision, d.max_tokens_cap, d.max_running_cap, d.paused) == ("int8", 64, 1, False)
    assert d.reason.startswith("battery 40%: middle band → int8; 55.0 °C: max_tokens ≤ 64")


@pytest.mark.parametrize(
    ("percent", "built", "expected"),
    [
        (90, ["fp32", "int8"], "fp32"),  # high band: fp16, else fp32 (the best quality on battery)
        (90, ["int8", "int4"], "int8"),  # … else the highest built
        (50, ["fp16", "int4"], "int4"),  # middle band: int8, else the next lower-memory one
        (50, ["fp32", "fp16"], "fp16"),  # … else the next higher
        (10, ["fp32", "int8"], "int8"),  # low band: int4, else the next higher
        (10, ["int4"], "int4"),
    ],
)
def test_unbuilt_band_precisions_fall_back_to_the_nearest_built(percent, built, expected):
    d = PolicyState(PowerPolicy()).update(on_battery(percent), built)
    band = {90: "fp16", 50: "int8", 10: "int4"}[percent]
    assert d.precision == expected
    assert ("not built" in d.reason) == (expected != band)
    if (percent, expected) == (90, "fp32"):
        assert d.reason == "battery 90%: high band: fp16 not built → fp32"


def test_mains_or_charging_serves_the_highest_built():
    state = PolicyState(PowerPolicy())
    assert state.update(PowerReading(20, False, True, None, "sysfs"), ALL).precision == "fp32"
    assert (
        state.update(PowerReading(20, True, None, None, "sysfs"), ["int4", "int8", "fp16"]).precision
        == "fp16"
    )
    assert state.decision.reason == "charging → fp16"
    d = state.update(on_battery(20), ALL)  # unplugged
    assert (d.precision, d.changed) == ("int4", True)
    mains_fp16 = PolicyState(PowerPolicy(mains_precision="fp16"))
    assert (
        mains_fp16.update(PowerReading(90, False, True, None, "sysfs"), ALL).reason == "on mains power → fp16"
    )
    assert (
        mains_fp16.update(PowerReading(90, False, True, None, "sysfs"), ["int8", "fp32"]).precision == "fp32"
    )


def test_no_sensors_serves_the_highest_unthrottled():
    state = PolicyState(PowerPolicy(), current="fp16")
    d = state.update(NO_SENSORS, ["fp16", "int8"])
    assert d == ("fp16", None, None, False, "no sensors", False)
    assert state.update(NO_SENSORS, ALL) == ("fp32", None, None, False, "no sensors", True)


def test_nothing_known_built_is_a_user_error():
    with pytest.raises(
        RuntimeUserError, match=r"no engine at any of int4, int8, fp16, fp32 is built \(built: bf16\)"
    ):
        resolve("highest", ["bf16"], downward=False)


def test_load_policy_off_auto_and_a_toml_file(tmp_path):
    assert load_policy("off") is None
    assert load_policy("auto") == PowerPolicy() and PowerPolicy().source == "auto"
    path = tmp_path / "power.toml"
    path.write_text(
        "# a phone that runs hot\nhigh_percent = 80\nbattery_margin = 2.5\nwarm_c = 55\ncritical_c = 70\n"
        'mains_precision = "fp16"\nwarm_max_tokens = 128\n'
    )
    policy = load_policy(str(path))
    assert policy == PowerPolicy(high_percent=80.0, battery_margin=2.5, warm_c=55.0, critical_c=70.0,
                                 mains_precision="fp16", warm_max_tokens=128)  # fmt: skip
    assert policy.source == str(path) and isinstance(policy.high_percent, float)
    assert set(KEYS) == {
        "high_percent", "low_percent", "battery_margin", "high_precision", "mid_precision", "low_precision",
        "mains_precision", "warm_c", "critical_c", "cool_margin_c", "warm_max_tokens", "warm_max_running",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("warm = 60", r"unknown key warm; the keys are high_percent, .*, warm_max_running"),
        ('warm_c = "hot"', r"warm_c = 'hot' must be a number, e.g. 65"),
        ("warm_max_tokens = 12.5", r"warm_max_tokens = 12.5 must be an integer, e.g. 256"),
        ("warm_max_running = true", r"warm_max_running = True must be an integer"),
        ("warm_max_running = 0", r"warm_max_running = 0 is out of range: use a positive number of sequences"),
        ("low_percent = 75", r"low_percent = 75.0 is out of range: use 0 up to below high_percent \(70\)"),
        ("high_percent = 101", r"high_percent = 101.0 is out of range"),
        ("critical_c = 60", r"critical_c = 60.0 is out of range: use °C above warm_c \(65\)"),
        ('mid_precision = "bf16"', r"mid_precision = 'bf16': use one of int4, int8, fp16, fp32"),
        ('mains_precision = "max"', r"mains_precision = 'max': use one of highest, int4"),
        ("[power]\nwarm_c = 60", r"unknown key power"),
        ("warm_c = ", r"not valid TOML"),
    ],
)
def test_bad_toml_says_which_key_and_what_is_allowed(tmp_path, text, message):
    path = tmp_path / "power.toml"
    path.write_text(text + "\n")
    with pytest.raises(RuntimeUserError, match=message) as error:
        load_policy(str(path))
    assert str(path) in str(error.value)


def test_a_missing_policy_file_is_a_user_error(tmp_path):
    with pytest.raises(RuntimeUserError, match="no such file; give off, auto, or the path of a TOML file"):
        load_policy(str(tmp_path / "nope.toml"))
    with pytest.raises(RuntimeUserError, match="cannot read it"):
        load_policy(str(tmp_path))  # a folder
