"""Power- and heat-aware serving: what the battery and the sensors say, and what to serve then.

  sensors.py  `read_power(root)` → `PowerReading`: battery %, charging, mains, hottest temperature
              (Linux sysfs under `root`; psutil elsewhere; all None on a server without sensors)
  policy.py   `PowerPolicy` (bands, thresholds; `load_policy("auto" | "off" | FILE.toml)`) and
              `PolicyState.update(reading, built)` → `Decision` (precision, caps, paused, reason)
  monitor.py  `PowerMonitor`: polls the sensors on a daemon thread, applies the policy, logs and
              counts each switch, `snapshot()` for /health
  metrics.py  Prometheus gauges and a counter on a registry the caller owns; `publish(metrics, snapshot)`
  energy.py   `EnergyMeter`: process CPU time and RAPL package energy over measured blocks (benchmarks)

Nothing here loads an engine or talks to Triton: the server and the gateway act on the decisions.
"""
