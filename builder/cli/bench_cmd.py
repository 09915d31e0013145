"""`autoglm-trt bench`: engine benchmarks, serving benchmarks, and the Markdown report of both."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from runtime.errors import RuntimeUserError

if TYPE_CHECKING:
    from builder.bench.serve import ServerSpec

app = typer.Typer(help="Benchmark built engines and a running server.", no_args_is_help=True)

INTERRUPTED = 130  # what a shell reports for Ctrl-C


def int_list(text: str, option: str) -> tuple[int, ...]:
    """'1,2,4' → (1, 2, 4); every value a positive integer."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise RuntimeUserError(f"{option} takes comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise RuntimeUserError(f"{option} needs positive integers like 1,2,4, got {text!r}")
    return values


def write_json(path: Path, report: dict) -> None:
    from runtime.build_records import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)


def _accuracy_only(engines: Path, precision, json_out, passages, max_tokens, threads) -> None:
    from builder.bench.accuracy import rows_as_dicts, text_accuracy

    rows = text_accuracy(engines, precision, passages=passages, max_tokens=max_tokens, threads=threads)
    print(f"{'component':<14}{'precision':<10}{'cosine':>10}{'top1':>9}{'perplexity':>12}{'ppl fp32':>10}")
    for row in rows:
        print(
            f"{row.component:<14}{row.precision:<10}{row.cosine:>10.5f}{row.top1:>9.4f}"
            f"{row.perplexity:>12.3f}{row.perplexity_fp32:>10.3f}"
        )
    if json_out is not None:
        write_json(json_out, {"engines": str(engines), "reference": "fp32", "held_out": "Python documentation "
                              "topics (evaluation part)", "accuracy": rows_as_dicts(rows)})  # fmt: skip


@app.command("engines")
def engines(
    engines: Annotated[Path, typer.Option(help="Engines directory (engines/NAME).")],
    precision: Annotated[
        list[str] | None,
        typer.Option(
            help="Precision to measure; repeat. Default: all built (fp32 always, as the reference)."
        ),
    ] = None,
    component: Annotated[
        list[str] | None,
        typer.Option(help="text_decoder, vision_encoder, audio_encoder; repeat. Default: all."),
    ] = None,
    prompt_lengths: Annotated[str, typer.Option(help="Prefill prompt lengths, comma-separated.")] = "128,512",
    prefill_batches: Annotated[str, typer.Option(help="Prefill batch sizes, comma-separated.")] = "1",
    batches: Annotated[
        str, typer.Option(help="Decode (and encoder) batch sizes, comma-separated.")
    ] = "1,2,4,8",
    context: Annotated[
        list[int] | None,
        typer.Option(
            min=0,
            help="Cached tokens before each decoded token; repeat for several. Default: 64 and 512.",
        ),
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed calls per case and precision.")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls per case and precision first.")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart here.")] = None,
    accuracy_only: Annotated[
        bool, typer.Option("--accuracy-only", help="Only the text accuracy of fp16/int8 against fp32.")
    ] = False,
    accuracy: Annotated[bool, typer.Option(help="Measure accuracy against fp32.")] = True,
    memory: Annotated[bool, typer.Option(help="Measure each engine's peak RSS in a fresh process.")] = True,
    passages: Annotated[int, typer.Option(min=1, help="Held-out passages to score (text accuracy).")] = 32,
    max_tokens: Annotated[int, typer.Option(min=2, help="Tokens per passage at most (text accuracy).")] = 512,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads per engine; 0 = all.")] = 0,
) -> None:
    """Prefill/decode/encode latency (p50/p90/p99), tokens/s, peak RSS, size and accuracy of every
    engine, precisions interleaved in one process; plus the memory-bandwidth roofline of batch-1
    decode at each --context."""
    if accuracy_only:
        _accuracy_only(engines, precision, json_out, passages, max_tokens, threads)
        return
    from builder.bench.engines import EngineBenchConfig, run_engine_bench
    from builder.bench.progress import StageLog
    from builder.bench.tables import print_engine_report

    cfg = EngineBenchConfig(
        engines_dir=engines,
        precisions=tuple(precision or ()),
        components=tuple(component or ()),
        prompt_lengths=int_list(prompt_lengths, "--prompt-lengths"),
        prefill_batches=int_list(prefill_batches, "--prefill-batches"),
        batches=int_list(batches, "--batches"),
        contexts=tuple(dict.fromkeys(context or (64, 512))),
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        accuracy=accuracy,
        passages=passages,
        max_tokens=max_tokens,
        memory=memory,
    )
    report = run_engine_bench(cfg, StageLog()).as_dict()
    _finish(report, json_out, plot, print_engine_report, "plot_engines")


def _finish(report: dict, json_out: Path | None, plot: Path | None, printer, plotter: str) -> None:
    """Table, JSON and chart of what was measured, also after Ctrl-C (then exit 130)."""
    printer(report)
    if json_out is not None:
        write_json(json_out, report)
    if plot is not None and report["results"]:
        from builder.bench import plots

        getattr(plots, plotter)(report, plot)
    if report.get("interrupted"):
        raise typer.Exit(INTERRUPTED)


@app.command("serve")
def serve(
    url: Annotated[str | None, typer.Option(help="A running gateway, e.g. http://127.0.0.1:8000.")] = None,
    engines: Annotated[
        Path | None, typer.Option(help="Instead of --url: start `autoglm-trt serve` on these engines.")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer key of the gateway.")] = None,
    model: Annotated[str | None, typer.Option(help="Model id. Default: the gateway's first.")] = None,
    concurrency: Annotated[str, typer.Option(help="Concurrency levels, comma-separated.")] = "1,2,4,8,16",
    requests: Annotated[
        int, typer.Option(min=1, help="Requests per level (at least 2 × the concurrency are sent).")
    ] = 16,
    max_tokens: Annotated[int, typer.Option(min=1, help="max_tokens of each request.")] = 64,
    prompts: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Prompt set (JSON). Default: the shipped one."),
    ] = None,
    threads: Annotated[int, typer.Option(min=0, help="With --engines: CPU threads per engine; 0 = all.")] = 0,
    replicas: Annotated[
        str,
        typer.Option(
            help="With --engines: LLM replica counts of our gateway to compare, e.g. 1,2 (a server "
            "each, in turn; the report adds throughput and TTFT ratios over the first)."
        ),
    ] = "1",
    dynamo_workers: Annotated[
        str | None,
        typer.Option(
            help="With --engines: after the gateway runs, NVIDIA Dynamo's OpenAI frontend with this "
            "many of our workers, e.g. 1,2 (a cluster each, in turn, same prompts and levels; ratios "
            "over the first gateway run and over the first Dynamo run). Needs the `dynamo` extra."
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart here.")] = None,
) -> None:
    """TTFT, TPOT, inter-token and end-to-end latency percentiles, requests/s and output tokens/s at
    each concurrency level, over OpenAI streaming chat completions."""
    from builder.bench.progress import StageLog
    from builder.bench.serve import ServeBenchConfig, Server, ServerSpec, run_serve_bench
    from builder.bench.tables import print_serve_report

    if (url is None) == (engines is None):
        raise RuntimeUserError("give either --url of a running gateway or --engines to start one")
    counts = tuple(dict.fromkeys(int_list(replicas, "--replicas")))
    workers = tuple(dict.fromkeys(int_list(dynamo_workers, "--dynamo-workers"))) if dynamo_workers else ()
    if engines is None and (counts != (1,) or workers):
        raise RuntimeUserError(
            "--replicas and --dynamo-workers need --engines: bench serve starts a server per count; "
            "a server at --url has the replicas it was started with (autoglm-trt serve --replicas N)"
        )
    if workers:
        from runtime.dynamo.compat import require_dynamo

        require_dynamo()  # before the gateway runs, not after them
    cfg = ServeBenchConfig(
        url=url or "",
        api_key=api_key,
        model=model,
        concurrency=int_list(concurrency, "--concurrency"),
        requests=requests,
        max_tokens=max_tokens,
        prompts=prompts,
    )
    log = StageLog()
    if engines is None:
        _finish(run_serve_bench(cfg, log), json_out, plot, print_serve_report, "plot_serve")
        return
    specs = [ServerSpec(Server.GATEWAY, n) for n in counts] + [ServerSpec(Server.DYNAMO, n) for n in workers]
    reports, interrupted = _serve_each(cfg, engines, threads, log, specs)
    if len(reports) == 1:
        report = {**next(iter(reports.values())), "interrupted": interrupted}
        _finish(report, json_out, plot, print_serve_report, "plot_serve")
        return
    from builder.bench.serve import compare_runs
    from builder.bench.tables import print_serve_comparison

    report = compare_runs(reports)
    report["interrupted"] = report["interrupted"] or interrupted
    _finish(report, json_out, plot, print_serve_comparison, "plot_serve")  # the chart: the first run


def _serve_each(cfg, engines: Path, threads: int, log, specs: list[ServerSpec]) -> tuple[dict, bool]:
    """Start, bench and stop each server in turn (one alive at a time). Returns the reports and
    whether Ctrl-C cut the runs short; the reports keep what was measured until then."""
    reports: dict[ServerSpec, dict] = {}
    for spec in specs:
        try:
            reports[spec] = _serve_started(cfg, engines, threads, log, spec)
        except KeyboardInterrupt:  # while a server was starting or stopping: it has been stopped
            log(f"interrupted at {spec.name}")
            if not reports:
                raise typer.Exit(INTERRUPTED) from None
            return reports, True
        if reports[spec].get("interrupted"):
            return reports, True
    return reports, False


def _serve_started(cfg, engines: Path, threads: int, log, spec: ServerSpec) -> dict:
    from dataclasses import replace

    from builder.bench.serve import Server, run_serve_bench

    if spec.server is Server.GATEWAY:
        started = _gateway(engines, threads, spec.instances, cfg.api_key, log)
    else:  # Dynamo's frontend takes no API key; the bench sends it along, unused
        started = _dynamo(engines, threads, spec.instances, log)
    with started as (root, served):
        return run_serve_bench(replace(cfg, url=root, model=cfg.model or served), log)


@contextmanager
def _gateway(
    engines: Path, threads: int, replicas: int, api_key: str | None, log
) -> Iterator[tuple[str, str]]:
    """`autoglm-trt serve --replicas N` as a child process; yields its root URL and model id."""
    from runtime.server.background import start_background_server

    extra = (("--threads", str(threads)) if threads else ()) + (
        ("--replicas", str(replicas)) if replicas > 1 else ()
    )
    log(f"starting autoglm-trt serve --engines {engines} {' '.join(extra)}".rstrip())
    try:
        server = start_background_server(engines, api_key=api_key, extra_args=extra)
    except RuntimeError as error:
        raise RuntimeUserError(f"the server did not start: {error}") from None
    log(f"server ready at {server.base_url}")
    try:
        yield server.root, server.model
    finally:
        log("stopping the server")
        _stop(server)


@contextmanager
def _dynamo(engines: Path, threads: int, workers: int, log) -> Iterator[tuple[str, str]]:
    """Dynamo's frontend and N of our workers on a free loopback port (what `autoglm-trt serve
    --dynamo --workers N` runs); yields the frontend's root URL and the model id."""
    from runtime.dynamo.launcher import DynamoCluster, DynamoServeConfig
    from runtime.server.launcher import free_port

    cluster = DynamoCluster(DynamoServeConfig(engines, workers=workers, port=free_port(), threads=threads))
    log(f"starting dynamo: frontend + {workers} worker(s) on {engines}")
    cluster.start(say=log)  # on failure or Ctrl-C it stops what it started, then raises
    log(f"dynamo ready at {cluster.base_url}/v1")
    try:
        yield cluster.base_url, cluster.model
    finally:
        log("stopping dynamo")
        cluster.stop()


def _stop(server) -> None:
    """After Ctrl-C the server got the SIGINT too and may be gone already."""
    import psutil

    try:
        server.stop()
    except psutil.Error:
        server.process.kill()
        server.process.wait()


@app.command("report")
def report(
    out: Annotated[Path, typer.Option(help="Markdown file to write (charts are linked relative to it).")],
    engines_json: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="From `bench engines --json`.")] = None,
    serve_json: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="From `bench serve --json`.")] = None,
    engines_plot: Annotated[Path | None, typer.Option(help="Chart from `bench engines --plot` to link.")] = None,
    serve_plot: Annotated[Path | None, typer.Option(help="Chart from `bench serve --plot` to link.")] = None,
) -> None:  # fmt: skip
    """Write a Markdown report of the engine and serving benchmarks."""
    from builder.bench.report import write_report

    if engines_json is None and serve_json is None:
        raise RuntimeUserError("give --engines-json, --serve-json or both")
    loaded = {
        k: json.loads(p.read_text()) if p else None for k, p in (("e", engines_json), ("s", serve_json))
    }
    write_report(out, loaded["e"], loaded["s"], engines_plot, serve_plot)
    print(f"wrote {out}")
