"""The power policy on a running server (glm4v-tiny at fp32, fp16 and int8) over a fake sysfs tree
that the test changes while 16 streams run: the battery walks from 100 % to 10 %, the temperature
passes the warm and critical thresholds and comes back. Every stream completes, each on one
precision (its system_fingerprint), new requests follow the policy, warm ones are capped, a
request sent while critical waits until it cools; /health and /metrics show it all."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
from openai import OpenAI

from runtime.server.background import start_background_server
from tests.runtime.power.sysfs_tree import battery, thermal_zone
from tests.runtime.serving.conftest import stop

POLICY = """
warm_c = 65.0
critical_c = 80.0
cool_margin_c = 5.0
warm_max_tokens = 3
warm_max_running = 2
"""
INTERVAL = 0.1


@pytest.fixture(scope="module")
def sysfs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sysfs")
    battery(root, capacity=100, status="Discharging")
    thermal_zone(root, 0, 40.0)
    return root


@pytest.fixture(scope="module")
def server(glm4v_tiny_int8_engines, sysfs, tmp_path_factory):
    policy = tmp_path_factory.mktemp("policy") / "power.toml"
    policy.write_text(POLICY)
    args = (
        "--threads",
        "1",
        "--power-policy",
        str(policy),
        "--sysfs-root",
        str(sysfs),
        "--power-interval",
        str(INTERVAL),
    )
    running = start_background_server(glm4v_tiny_int8_engines, extra_args=args)
    yield running
    stop(running)


def _set(sysfs, capacity: int | None = None, celsius: float | None = None) -> None:
    if capacity is not None:
        battery(sysfs, capacity=capacity, status="Discharging")
    if celsius is not None:
        thermal_zone(sysfs, 0, celsius)
    time.sleep(INTERVAL * 4)  # a few polls


def _health(server) -> dict:
    return httpx.get(f"{server.base_url.removesuffix('/v1')}/health", timeout=30).json()["power"]


def _precision(answer) -> str:
    return answer.system_fingerprint.removeprefix("autoglm-trt-")


def test_streams_survive_every_switch_and_follow_the_policy(server, sysfs):
    client = OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)

    def ask(i: int, max_tokens: int = 24):
        return client.chat.completions.create(
            model=server.model,
            messages=[{"role": "user", "content": f"Count to {i}."}],
            max_tokens=max_tokens,
            temperature=0,
        )

    def stream(i: int):
        chunks = list(
            client.chat.completions.create(
                model=server.model,
                messages=[{"role": "user", "content": f"Tell me about {i}."}],
                max_tokens=40,
                temperature=0,
                stream=True,
            )
        )
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        fingerprints = {c.system_fingerprint for c in chunks if c.system_fingerprint}
        return finishes, fingerprints

    assert _health(server)["precision"] == "fp16" and _health(server)["battery"] == 100
    assert _precision(ask(1)) == "fp16"
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        streams = [pool.submit(stream, i) for i in range(16)]
        _set(sysfs, capacity=50)  # the middle band: int8, while the streams run
        middle = ask(2)
        _set(sysfs, capacity=10)  # int4 is not built: the nearest, int8
        low = ask(3)
        results = [s.result(timeout=600) for s in streams]
    for finishes, fingerprints in results:  # every stream ended, on exactly one precision
        assert finishes in (["stop"], ["length"]) and len(fingerprints) == 1
    assert _precision(middle) == "int8" and _precision(low) == "int8"

    _set(sysfs, celsius=70.0)  # warm: capped
    power = _health(server)
    assert power["throttled"] and not power["paused"] and power["temperature_c"] == 70.0
    assert ask(4).usage.completion_tokens <= 3

    _set(sysfs, celsius=85.0)  # critical: nothing new starts until it cools
    assert _health(server)["paused"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(ask, 5, 4)
        time.sleep(1.0)
        assert not waiting.done()
        _set(sysfs, celsius=40.0, capacity=90)
        answer = waiting.result(timeout=120)
    assert answer.choices[0].finish_reason in ("stop", "length")
    power = _health(server)
    assert not power["throttled"] and not power["paused"] and power["precision"] == "fp16"

    text = httpx.get(f"{server.base_url.removesuffix('/v1')}/metrics", timeout=30).text
    assert 'autoglm_power_precision{precision="fp16"} 1.0' in text
    assert "autoglm_power_battery_percent 90.0" in text
    switches = [line for line in text.splitlines() if line.startswith("autoglm_power_switches_total")]
    assert switches and float(switches[0].split()[-1]) >= 4  # int8, warm, critical, cool/fp16


def test_bad_policy_file_is_one_error_line(tmp_path, glm4v_tiny_engines):
    from tests.conftest import run_cli

    bad = tmp_path / "power.toml"
    bad.write_text("warm_c = 'hot'\n")
    result = run_cli("serve", "--engines", glm4v_tiny_engines, "--power-policy", bad, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "warm_c" in result.stderr
    assert "Traceback" not in result.stderr
