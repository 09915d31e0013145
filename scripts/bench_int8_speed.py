"""INT8 speed against fp32 and fp16 on this machine: prefill and decode through the real runtime.

    .venv/bin/python scripts/bench_int8_speed.py --engines engines/smollm2-135m [--json F]

A shortcut for `autoglm-trt bench engines --component text_decoder` with this script's cases:
prefill of 512 tokens at batch 1, decode of one token at batch 1 and 8 after 512 cached tokens;
precisions interleaved after a warm-up, ratios of the medians int8/fp32 and int8/fp16.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.bench.engines import EngineBenchConfig, run_engine_bench
from builder.bench.progress import StageLog
from builder.bench.tables import console, latency_table
from runtime.build_records import write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cfg = EngineBenchConfig(
        engines_dir=args.engines,
        components=("text_decoder",),
        prompt_lengths=(args.prefill_tokens,),
        batches=(1, 8),
        contexts=(512,),
        repeats=args.repeats,
        threads=args.threads,
        accuracy=False,
        memory=False,
    )
    report = run_engine_bench(cfg, StageLog()).as_dict()
    console().print(latency_table(report))
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
