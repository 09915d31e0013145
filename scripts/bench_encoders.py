"""Encoder latency and modality memory, measured on built engines (a script, not a test).

    python scripts/bench_encoders.py latency --engines engines/glm4v-tiny [--repeats 20] [--threads 0]
    python scripts/bench_encoders.py memory  --engines engines/glm4v-tiny

`latency`: each encoder engine at batch 1 and 8 for every built precision, interleaved in one
process (`autoglm-trt bench engines --component vision_encoder --component audio_encoder`).
`memory`: resident set size of a fresh process that loads the text engines and generates (text
only), vs one that also runs both encoders (everything loaded), and after `unload_idle(0)`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.bench.engines import EngineBenchConfig, run_engine_bench  # noqa: E402
from builder.bench.progress import StageLog  # noqa: E402
from builder.bench.tables import console, latency_table  # noqa: E402
from runtime.manifest import Manifest  # noqa: E402

ENCODERS = ("vision_encoder", "audio_encoder")


def latency(engines: Path, repeats: int, threads: int) -> dict:
    """The encoders' part of `autoglm-trt bench engines` at batch 1 and 8 (interleaved, no accuracy)."""
    components = tuple(c for c in ENCODERS if c in Manifest.load(engines).encoders)
    if not components:
        raise SystemExit(f"{engines} has no encoder engines")
    cfg = EngineBenchConfig(
        engines_dir=engines,
        components=components,
        batches=(1, 8),
        repeats=repeats,
        threads=threads,
        accuracy=False,
        memory=False,
    )
    return run_engine_bench(cfg, StageLog()).as_dict()


def _rss_child(engines: Path, mode: str) -> None:
    """Runs in a fresh process; prints RSS (MiB) after the requested work."""
    import io
    import wave

    import psutil
    from PIL import Image

    from runtime.llm_engine import LLMEngine
    from runtime.sampling import SamplingParams

    llm = LLMEngine(engines, precision="auto")
    llm.generate(["Hello there"], SamplingParams(max_tokens=4))
    rss = {"text_only": psutil.Process().memory_info().rss / 2**20}
    if mode == "all":
        image = io.BytesIO()
        Image.new("RGB", (640, 360), (120, 30, 200)).save(image, "PNG")
        audio = io.BytesIO()
        with wave.open(audio, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(np.zeros(16000 * 3, "<i2").tobytes())
        images = [image.getvalue()] if "vision_encoder" in llm.manifest.encoders else []
        audios = [audio.getvalue()] if "audio_encoder" in llm.manifest.encoders else []
        llm.generate_media(["Describe it."], images, audios, SamplingParams(max_tokens=4))
        rss["all_loaded"] = psutil.Process().memory_info().rss / 2**20
        rss["loaded"] = list(llm.encoders.loaded)
        llm.encoders.unload_idle(0)
        rss["after_unload_idle"] = psutil.Process().memory_info().rss / 2**20
    print(json.dumps(rss))


def memory(engines: Path) -> dict:
    out = {}
    modes = ("text", "all") if Manifest.load(engines).encoders else ("text",)
    for mode in modes:
        result = subprocess.run(
            [sys.executable, __file__, "_rss", "--engines", str(engines), "--mode", mode],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["latency", "memory", "_rss"])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--mode", choices=["text", "all"], default="text")
    args = parser.parse_args()
    if args.what == "_rss":
        _rss_child(args.engines, args.mode)
    elif args.what == "latency":
        console().print(latency_table(latency(args.engines, args.repeats, args.threads)))
    else:
        result = memory(args.engines)
        text = result["text"]["text_only"]
        print(f"text engines only:           {text:8.1f} MiB RSS")
        if "all" not in result:
            print("(no encoders in these engines)")
            return
        full = result["all"]["all_loaded"]
        print(
            f"all loaded ({', '.join(result['all']['loaded'])}): {full:8.1f} MiB RSS  ({full / text:.2f}× text only)"
        )
        print(f"after unload_idle(0):        {result['all']['after_unload_idle']:8.1f} MiB RSS")


if __name__ == "__main__":
    main()
