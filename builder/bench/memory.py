"""Peak resident memory of one engine, measured in a fresh process that loads only that engine and
runs its largest benchmark case once.

The timing runs hold every precision at once (they are interleaved), so their process's memory
says nothing about any one engine; a child process per engine does.

    python -m builder.bench.memory --engines DIR --component C --precision P --batch B --tokens N
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import RuntimeUserError


@dataclass(frozen=True)
class MemoryCase:
    component: str
    precision: str
    prefill_batch: int  # text: the largest prefill (batch × tokens); encoders: the largest batch
    prefill_tokens: int
    decode_batch: int  # text only
    decode_context: int


def peak_rss_mb(engines_dir: Path, case: MemoryCase, threads: int, timeout: float = 600.0) -> float:
    command = [
        sys.executable,
        "-m",
        "builder.bench.memory",
        "--engines",
        str(engines_dir),
        "--threads",
        str(threads),
        *(arg for name, value in vars(case).items() for arg in (f"--{name.replace('_', '-')}", str(value))),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeUserError(
            f"measuring the memory of the {case.precision} {case.component} failed:\n{result.stderr[-2000:]}"
        )
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def _run(engines_dir: Path, case: MemoryCase, threads: int) -> None:
    if case.component == "text_decoder":
        from builder.bench.text_cases import decode_case, prefill_case
        from runtime.llm_engine import LLMEngine

        llm = LLMEngine(engines_dir, case.precision, threads=threads)
        prefill_case(llm, case.prefill_batch, case.prefill_tokens)()
        decode_case(llm, case.decode_batch, case.decode_context)()
        return
    import numpy as np

    from builder.bench.encoder_cases import encode_case
    from runtime.engine_loader import load_engine
    from runtime.manifest import Manifest

    manifest = Manifest.load(engines_dir)
    info = manifest.encoders[case.component]
    engine = load_engine(manifest, engines_dir, case.component, case.precision, threads=threads)
    # Zeros, not preprocessed media: the memory does not depend on the values, and preprocessing
    # would import transformers into the measured process.
    encode_case(engine, info, np.zeros((case.prefill_batch, *info["input_shape"]), np.float32))()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--component", required=True)
    parser.add_argument("--precision", required=True)
    parser.add_argument("--prefill-batch", type=int, required=True)
    parser.add_argument("--prefill-tokens", type=int, required=True)
    parser.add_argument("--decode-batch", type=int, required=True)
    parser.add_argument("--decode-context", type=int, required=True)
    args = parser.parse_args()
    case = MemoryCase(
        args.component, args.precision, args.prefill_batch, args.prefill_tokens, args.decode_batch,
        args.decode_context,
    )  # fmt: skip
    _run(args.engines, case, args.threads)
    print(json.dumps({"peak_rss_mb": round(high_water_rss_kib() / 1024, 1)}))


def high_water_rss_kib() -> int:
    """VmHWM: the peak resident set of this process's own address space. Not ru_maxrss: Linux
    carries that over from the parent across fork and exec, so the child would report the
    benchmark process's peak (all engines loaded) instead of its own."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


if __name__ == "__main__":
    main()
