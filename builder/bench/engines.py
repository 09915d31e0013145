"""`bench engines`: latency, throughput, memory and accuracy of every built engine, per precision.

Order of work (each stage adds to the report, so an interrupt keeps what finished):
  1. text decoder: prefill at each prompt length, decode of one token at each batch and context
     (interleaved); decode also reports CPU time and RAPL energy per token (runtime/power/energy.py)
  2. encoders: one call at each batch (interleaved); embeddings of the largest batch vs fp32
  3. text accuracy against fp32 (builder/bench/accuracy.py)
  4. peak RSS per engine, each in a fresh process (builder/bench/memory.py)
  5. the bandwidth roofline of batch-1 decode at each context (builder/bench/roofline.py)
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from builder.bench import encoder_cases, roofline, text_cases
from builder.bench.memory import MemoryCase, peak_rss_mb
from builder.bench.results import latency_ratios, ordered, precision_rank
from builder.bench.stats import summarize, time_in_blocks
from runtime.errors import RuntimeUserError
from runtime.llm_engine import COMPONENT as TEXT
from runtime.manifest import Manifest
from runtime.power.energy import EnergyMeter, RaplCounters

REFERENCE = "fp32"


@dataclass(frozen=True)
class EngineBenchConfig:
    engines_dir: Path
    precisions: tuple[str, ...] = ()  # empty: every built one; fp32 is always added when built
    components: tuple[str, ...] = ()  # empty: text_decoder and every built encoder
    prompt_lengths: tuple[int, ...] = (128, 512)
    prefill_batches: tuple[int, ...] = (1,)
    batches: tuple[int, ...] = (1, 2, 4, 8)  # decode, and encoder calls
    contexts: tuple[int, ...] = (64, 512)  # cached tokens before each decoded token; one case each
    repeats: int = 10
    warmup: int = 1
    threads: int = 0
    accuracy: bool = True
    passages: int = 32
    max_tokens: int = 512
    memory: bool = True
    bandwidth_mb: int = 1024


@dataclass
class EngineReport:
    config: dict
    engines: list[dict] = field(default_factory=list)  # component, precision, backend, file, file_mb
    results: list[dict] = field(default_factory=list)  # component × precision × phase × batch × seq × context
    accuracy: list[dict] = field(default_factory=list)
    roofline: dict | None = None
    energy: dict | None = None  # how decode CPU time and energy per token were measured, or why not
    interrupted: bool = False

    def as_dict(self) -> dict:
        return {**asdict(self), "ratios": latency_ratios(self.results)}


def chosen_precisions(manifest: Manifest, component: str, requested: tuple[str, ...]) -> list[str]:
    built = manifest.precisions(component)
    if component == TEXT:
        missing = [p for p in requested if p not in built]
        if missing:
            raise RuntimeUserError(
                f"no {', '.join(missing)} text_decoder engine is built (built: {', '.join(built)}); "
                f"pick from those with --precision"
            )
    wanted = set(requested or built) | ({REFERENCE} & set(built))
    return ordered(p for p in wanted if p in built)  # encoders may lack a precision the decoder has


def _rows(
    component: str, phase: str, batch: int, seq: int, samples: dict[str, list[float]], context: int = 0
) -> list[dict]:
    """seq: new tokens per sequence (prefill: the prompt, decode: 1; encode: embeddings per item);
    context: tokens already cached before them (decode only)."""
    rows = []
    for precision, times in samples.items():
        s = summarize(times)
        tokens = batch if phase == "decode" else batch * seq  # decode adds one token per sequence
        p50 = round(s.p50_ms, 4)
        rows.append(
            {
                "component": component,
                "precision": precision,
                "phase": phase,
                "batch": batch,
                "seq": seq,
                "context": context,
                "p50_ms": p50,
                "p90_ms": round(s.p90_ms, 4),
                "p99_ms": round(s.p99_ms, 4),
                "mean_ms": round(s.mean_ms, 4),
                "repeats": s.count,
                "tokens_per_s": round(tokens / (p50 / 1000), 2),  # from the reported median
                "peak_rss_mb": None,  # filled by the memory stage
                "cpu_ms_per_token": None,  # decode: filled by _per_token
                "energy_mj_per_token": None,
            }
        )
    return rows


def _measure(
    report: EngineReport,
    cfg: EngineBenchConfig,
    log,
    label: str,
    rows_of,
    runs: dict,
    meters: dict | None = None,
) -> None:
    samples = time_in_blocks(runs, cfg.repeats, cfg.warmup, meters=meters)
    rows = rows_of(samples)
    report.results += rows
    log(f"{label}: " + "  ".join(f"{r['precision']} {r['p50_ms']:.2f} ms" for r in rows))


def _per_token(rows: list[dict], meters: dict[str, EnergyMeter], tokens_per_call: int) -> list[dict]:
    for row in rows:
        meter = meters[row["precision"]]
        tokens = meter.blocks * tokens_per_call
        energy = meter.energy_j
        row["cpu_ms_per_token"] = round(meter.cpu_s * 1000 / tokens, 4)
        row["energy_mj_per_token"] = None if energy is None else round(energy * 1000 / tokens, 4)
    return rows


def bench_text(report: EngineReport, cfg: EngineBenchConfig, manifest: Manifest, log) -> None:
    from runtime.llm_engine import LLMEngine

    precisions = chosen_precisions(manifest, TEXT, cfg.precisions)
    log(f"text_decoder: loading {', '.join(precisions)}")
    # Spinning sessions, as a lone serving engine's; each precision is timed in blocks of calls that
    # start once the others' threads have fallen idle (stats.time_in_blocks).
    llms = {p: LLMEngine(cfg.engines_dir, p, threads=cfg.threads) for p in precisions}
    for batch in cfg.prefill_batches:
        for seq in cfg.prompt_lengths:
            runs = {p: text_cases.prefill_case(g, batch, seq) for p, g in llms.items()}
            rows_of = lambda s, b=batch, n=seq: _rows(TEXT, "prefill", b, n, s)  # noqa: E731
            _measure(report, cfg, log, f"text_decoder prefill b{batch} s{seq}", rows_of, runs)
    _bench_decode(report, cfg, llms, log)


def _bench_decode(report: EngineReport, cfg: EngineBenchConfig, llms: dict, log) -> None:
    """Decode latency, plus CPU time and RAPL energy per token of the timed calls."""
    rapl = RaplCounters()
    if not rapl.readable:
        log(f"decode energy per token: not measured: {rapl.note}")
    try:
        for context in cfg.contexts:
            for batch in cfg.batches:
                meters = {p: EnergyMeter(rapl) for p in llms}
                runs = {p: text_cases.decode_case(g, batch, context) for p, g in llms.items()}
                rows_of = lambda s, b=batch, c=context, m=meters: _per_token(  # noqa: E731
                    _rows(TEXT, "decode", b, 1, s, c), m, b
                )
                label = f"text_decoder decode b{batch} c{context}"
                _measure(report, cfg, log, label, rows_of, runs, meters)
    finally:
        report.energy = {
            "cpu": "process CPU time (all threads) of the timed decode calls / tokens generated",
            "energy": "RAPL package energy of the timed decode calls / tokens generated (the whole "
            "package: other processes count too)",
            "rapl_zones": list(rapl.zones),
            "note": rapl.note,  # why energy_mj_per_token is null, when it is
        }
        rapl.close()


def bench_encoder(
    report: EngineReport, cfg: EngineBenchConfig, manifest: Manifest, component: str, log
) -> None:
    from runtime.engine_loader import load_engine

    info = manifest.encoders[component]
    precisions = chosen_precisions(manifest, component, cfg.precisions)
    log(f"{component}: loading {', '.join(precisions)}")
    engines = {
        p: load_engine(manifest, cfg.engines_dir, component, p, threads=cfg.threads) for p in precisions
    }
    limit = manifest.axes.get("batch", [1, 8])[1]
    batches = [b for b in cfg.batches if b <= limit]
    tokens = encoder_cases.tokens_per_item(info)
    outputs: dict[str, object] = {}
    for batch in batches:
        inputs = encoder_cases.encoder_inputs(manifest, component, batch)
        runs = {p: encoder_cases.encode_case(e, info, inputs) for p, e in engines.items()}
        rows_of = lambda s, b=batch: _rows(component, "encode", b, tokens, s)  # noqa: E731
        _measure(report, cfg, log, f"{component} encode b{batch}", rows_of, runs)
        outputs = {p: run() for p, run in runs.items()}  # the largest batch's embeddings remain
    if cfg.accuracy and REFERENCE in outputs and len(outputs) > 1:
        report.accuracy += encoder_cases.encoder_accuracy(outputs, component, REFERENCE)


def bench_text_accuracy(report: EngineReport, cfg: EngineBenchConfig, manifest: Manifest, log) -> None:
    from builder.bench.accuracy import rows_as_dicts, text_accuracy

    others = [p for p in chosen_precisions(manifest, TEXT, cfg.precisions) if p != REFERENCE]
    if REFERENCE not in manifest.precisions(TEXT) or not others:
        log("text_decoder accuracy: skipped (needs fp32 and another precision)")
        return
    log(f"text_decoder accuracy vs fp32: {cfg.passages} held-out passages")
    rows = text_accuracy(cfg.engines_dir, others, cfg.passages, cfg.max_tokens, cfg.threads)
    report.accuracy += rows_as_dicts(rows)
    log("text_decoder accuracy: " + "  ".join(f"{r.precision} cos {r.cosine:.4f}" for r in rows))


def bench_memory(report: EngineReport, cfg: EngineBenchConfig, log) -> None:
    for entry in report.engines:
        component, precision = entry["component"], entry["precision"]
        rows = [r for r in report.results if (r["component"], r["precision"]) == (component, precision)]
        if not rows:
            continue
        biggest = max(rows, key=lambda r: r["batch"] * r["seq"] if r["phase"] != "decode" else 0)
        decode = max((r["batch"] for r in rows if r["phase"] == "decode"), default=1)
        case = MemoryCase(component, precision, biggest["batch"], biggest["seq"], decode, max(cfg.contexts))
        peak = peak_rss_mb(cfg.engines_dir, case, cfg.threads)
        entry["peak_rss_mb"] = peak
        for row in rows:
            row["peak_rss_mb"] = peak
        log(f"{component} {precision}: peak RSS {peak:.0f} MB (fresh process)")


def bench_roofline(report: EngineReport, cfg: EngineBenchConfig, manifest: Manifest, log) -> None:
    from runtime.decoder_io import POOL_DTYPE_INPUT
    from runtime.paged_decoder import DecoderLimits

    decode_b1 = [r for r in report.results if (r["component"], r["phase"], r["batch"]) == (TEXT, "decode", 1)]
    if not decode_b1:
        return
    bandwidth = roofline.measure_bandwidth(cfg.bandwidth_mb, cfg.threads)
    log(f"memory read bandwidth: {bandwidth.gb_per_s:.1f} GB/s ({bandwidth.threads} threads)")
    limits = DecoderLimits.from_manifest(manifest.decoder)
    weights: dict[str, roofline.WeightBytes] = {}
    cases = []
    for row in sorted(decode_b1, key=lambda r: (precision_rank(r["precision"]), r["context"])):
        precision, context = row["precision"], row["context"]
        entry = manifest.entry(TEXT, precision)
        if precision not in weights:
            weights[precision] = roofline.weight_bytes(cfg.engines_dir / entry.file, entry.backend)
        read = weights[precision]
        itemsize = _itemsize(next(t.dtype for t in entry.inputs if t.name == POOL_DTYPE_INPUT))
        kv = roofline.kv_bytes_per_token(limits, context, itemsize)
        cases.append(
            {"precision": precision, "context": context, "weights_counted_as": read.counted_as,
             "kv_itemsize": itemsize, "weights_read_in_full_bytes": read.read_in_full,
             "gather_row_bytes": read.gather_rows, "gather_table_bytes": read.gather_tables,
             **roofline.roofline(bandwidth, read.per_token, kv, row["tokens_per_s"])}
        )  # fmt: skip
    report.roofline = {
        "bandwidth_gb_per_s": bandwidth.gb_per_s,
        "bandwidth_threads": bandwidth.threads,
        "bandwidth_array_mb": bandwidth.array_mb,
        "contexts": sorted({c["context"] for c in cases}),
        "formula": "fraction = decode tokens/s at batch 1 / (bandwidth / (weight_bytes + kv_bytes)); "
        "weight_bytes = all ONNX initializers, lookup-only (Gather/GatherBlockQuantized) tables one row; "
        "kv_bytes = layers * 2 * context * kv_heads * head_dim * kv itemsize",
        "cases": cases,
    }
    log("roofline: " + "  ".join(f"{c['precision']} c{c['context']} {c['fraction']:.0%}" for c in cases))


def _itemsize(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize


def engine_sizes(
    manifest: Manifest, engines_dir: Path, components: list[str], precisions: tuple[str, ...]
) -> list[dict]:
    out = []
    for component in components:
        for precision in chosen_precisions(manifest, component, precisions):
            entry = manifest.entry(component, precision)
            size = (engines_dir / entry.file).stat().st_size
            out.append({"component": component, "precision": precision, "backend": entry.backend,
                        "file": entry.file, "file_mb": round(size / 1e6, 2), "peak_rss_mb": None})  # fmt: skip
    return out


def validate(cfg: EngineBenchConfig, manifest: Manifest) -> None:
    """Every case fits the engines' limits: checked before any work, not after minutes of it."""
    limit_batch, limit_seq = manifest.decoder["max_batch"], manifest.decoder["max_seq_len"]
    for option, values in (("--batches", cfg.batches), ("--prefill-batches", cfg.prefill_batches)):
        if max(values) > limit_batch:
            raise RuntimeUserError(
                f"{option} {max(values)} exceeds the batch of {limit_batch} the engines were built for; "
                f"use values up to {limit_batch}"
            )
    if not cfg.contexts:
        raise RuntimeUserError("give at least one --context (cached tokens before a decoded token), e.g. 512")
    for option, tokens in (
        ("--prompt-lengths", max(cfg.prompt_lengths)),
        ("--context", max(cfg.contexts) + 1),
    ):
        if tokens >= limit_seq:
            raise RuntimeUserError(
                f"{option}: {tokens} tokens do not fit the engines' {limit_seq}-token limit; "
                f"use at most {limit_seq - 1 - (option == '--context')}"
            )


def run_engine_bench(cfg: EngineBenchConfig, log: Callable[[str], None]) -> EngineReport:
    """Every stage in turn; Ctrl-C ends the run with the report of what completed."""
    manifest = Manifest.load(cfg.engines_dir)
    if manifest.stages:  # file sizes, per-engine memory and the roofline are per single graph
        raise RuntimeUserError(
            f"{cfg.engines_dir} holds the text decoder in {len(manifest.stages)} pipeline stages, which "
            "bench engines does not measure yet; `generate --json` reports their timings, or bench "
            "engines built without --pipeline-stages"
        )
    available = [TEXT, *encoder_cases.encoder_components(manifest)]
    components = list(cfg.components) or available
    unknown = [c for c in components if c not in available]
    if unknown:
        raise RuntimeUserError(
            f"{cfg.engines_dir} has no {', '.join(unknown)} engine (has: {', '.join(available)}); "
            f"pick from those with --component"
        )
    validate(cfg, manifest)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    report = EngineReport(config={**config, "model": manifest.model.get("name")})
    report.engines = engine_sizes(manifest, cfg.engines_dir, components, cfg.precisions)
    try:
        if TEXT in components:
            bench_text(report, cfg, manifest, log)
            gc.collect()  # the timing engines go before accuracy loads its own
        for component in components:
            if component != TEXT:
                bench_encoder(report, cfg, manifest, component, log)
                gc.collect()
        if cfg.accuracy and TEXT in components:
            bench_text_accuracy(report, cfg, manifest, log)
        if cfg.memory:
            bench_memory(report, cfg, log)
        if TEXT in components:
            bench_roofline(report, cfg, manifest, log)
    except KeyboardInterrupt:
        report.interrupted = True
        log("interrupted: reporting what was measured so far")
    return report
