"""INT8 speed against fp32 and fp16 on this machine: prefill and decode through the real runtime.

    .venv/bin/python scripts/bench_int8_speed.py --engines engines/smollm2-135m [--json F]

Each case runs every precision in turn (interleaved, one process), after a warm-up call, and
reports the median milliseconds and the ratios int8/fp32 and int8/fp16 (below 1: int8 is faster).
Cases: prefill of 512 tokens at batch 1; decode of one token at batch 1 and 8 after 512 cached
tokens (the pool holds zeros: the work per call does not depend on the cached values).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from builder.manifest import Manifest
from runtime.generate import TextGenerator
from runtime.paged_decoder import StepInput

PRECISIONS = ("fp32", "fp16", "int8")


def prefill_step(generator: TextGenerator, tokens: int):
    ids = np.random.default_rng(0).integers(100, 1000, tokens).tolist()

    def run():
        generator.kv.allocate_slots("p", tokens)
        try:
            generator.decoder.step([StepInput("p", ids, 0)])
        finally:
            generator.kv.free("p")

    return run


def decode_step(generator: TextGenerator, batch: int, past: int):
    rids = [f"d{i}" for i in range(batch)]
    for rid in rids:
        generator.kv.allocate_slots(rid, past + 1)
    step = [StepInput(rid, [42 + i], past) for i, rid in enumerate(rids)]
    return lambda: generator.decoder.step(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    built = Manifest.load(args.engines).precisions("text_decoder")
    if "int8" not in built or "fp32" not in built:
        raise SystemExit(
            f"{args.engines} needs fp32 and int8 text_decoder engines (built: {', '.join(built)})"
        )
    generators = {p: TextGenerator(args.engines, p, threads=args.threads) for p in PRECISIONS if p in built}
    cases = {
        f"prefill b1 x{args.prefill_tokens}": {
            p: prefill_step(g, args.prefill_tokens) for p, g in generators.items()
        },
        "decode b1 (past 512)": {p: decode_step(g, 1, 512) for p, g in generators.items()},
        "decode b8 (past 512)": {p: decode_step(g, 8, 512) for p, g in generators.items()},
    }
    results = {}
    for case, runs in cases.items():
        times: dict[str, list[float]] = {p: [] for p in generators}
        for run in runs.values():
            run()  # warm-up
        for _ in range(args.repeats):
            for precision, run in runs.items():
                start = time.perf_counter()
                run()
                times[precision].append((time.perf_counter() - start) * 1000)
        ms = {p: statistics.median(t) for p, t in times.items()}
        ratios = {f"int8/{p}": round(ms["int8"] / ms[p], 3) for p in ("fp32", "fp16") if p in ms}
        results[case] = {"ms": {p: round(v, 2) for p, v in ms.items()}, **ratios}
        timings = "  ".join(f"{p} {v:8.1f} ms" for p, v in ms.items())
        print(f"{case:<24} {timings}  " + "  ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    if args.json:
        args.json.write_text(json.dumps({"engines": str(args.engines), "cases": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
