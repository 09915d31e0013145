"""`bench serve`: latency and throughput of a running gateway over OpenAI streaming chat completions.

Per request (greedy, streamed, usage included):
  ttft  time from sending to the first chunk that carries text (content or reasoning_content)
  e2e   time from sending to the end of the stream
  tpot  (e2e − ttft) / (output tokens − 1): the mean time per output token after the first
  itl   gaps between consecutive text chunks (a chunk may carry more than one token when the
        detokenizer holds back an incomplete character; usage gives the true token count)
Per concurrency level: `max(requests, 2 × concurrency)` requests, at most `concurrency` in flight;
requests/s and output tokens/s are completed requests and their output tokens over the level's
wall time. One untimed request warms the server up first.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np

from builder.bench.stats import summarize
from runtime.errors import RuntimeUserError

PROMPTS = Path(__file__).with_name("prompts.json")


@dataclass(frozen=True)
class ServeBenchConfig:
    url: str  # gateway root, http://HOST:PORT (a trailing /v1 is accepted)
    api_key: str | None = None
    model: str | None = None  # None: the first of /v1/models
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    requests: int = 16
    max_tokens: int = 64
    prompts: Path | None = None  # None: the shipped prompt set
    images: int = 0  # sample images attached to every request (models with a vision encoder)
    timeout_s: float = 300.0

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/").removesuffix("/v1") + "/v1"


class RequestTiming(NamedTuple):
    ttft_s: float
    e2e_s: float
    output_tokens: int
    chunk_times_s: list[float]  # arrival of each text chunk, from the request's start
    text: str = ""  # the answer's content (a conversation's next turn needs it)
    usage: object = None  # the server's usage block (prompt and cached tokens)


@dataclass
class ServeReport:
    url: str
    model: str
    config: dict
    prompt_set: str
    results: list[dict] = field(default_factory=list)
    interrupted: bool = False

    def as_dict(self) -> dict:
        return dict(vars(self))


def load_prompts(path: Path | None) -> tuple[str | None, list[str]]:
    path = path or PROMPTS
    try:
        data = json.loads(path.read_text())
        prompts = [str(p) for p in data["prompts"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RuntimeUserError(
            f"{path} is not a prompt set ({error}); expected JSON like "
            '{"system": "...", "prompts": ["question", ...]}'
        ) from None
    if not prompts:
        raise RuntimeUserError(f"{path} lists no prompts")
    return data.get("system"), prompts


def _image_url(index: int) -> str:
    from builder.bench.encoder_cases import _images

    return "data:image/png;base64," + base64.b64encode(_images(index + 1)[index]).decode()


def messages_for(system: str | None, text: str, image_urls: list[str]) -> list[dict]:
    content: str | list[dict] = text
    if image_urls:
        content = [
            *({"type": "image_url", "image_url": {"url": u}} for u in image_urls),
            {"type": "text", "text": text},
        ]
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": content}
    ]


async def timed_request(client, model: str, messages: list[dict], max_tokens: int) -> RequestTiming:
    start = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, usage, text = [], None, []
    async for chunk in stream:
        if chunk.choices and _carries_text(chunk.choices[0].delta):
            chunks.append(time.perf_counter() - start)
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    e2e = time.perf_counter() - start
    tokens = usage.completion_tokens if usage else len(chunks)
    return RequestTiming(chunks[0] if chunks else e2e, e2e, tokens, chunks, "".join(text), usage)


def _carries_text(delta) -> bool:
    # Thinking models stream their reasoning first (`reasoning_content`); those are output tokens too.
    return bool(delta.content or getattr(delta, "reasoning_content", None))


def _percentiles(prefix: str, values_s: list[float]) -> dict[str, float | None]:
    if not values_s:
        return {f"{prefix}_{p}_ms": None for p in ("p50", "p90", "p99", "mean")}
    s = summarize([v * 1000 for v in values_s])
    return {f"{prefix}_p50_ms": round(s.p50_ms, 3), f"{prefix}_p90_ms": round(s.p90_ms, 3),
            f"{prefix}_p99_ms": round(s.p99_ms, 3), f"{prefix}_mean_ms": round(s.mean_ms, 3)}  # fmt: skip


def level_result(concurrency: int, timings: list[RequestTiming], errors: list[str], wall_s: float) -> dict:
    """Percentiles and rates of one concurrency level from its requests' timings."""
    tpot = [(t.e2e_s - t.ttft_s) / (t.output_tokens - 1) for t in timings if t.output_tokens > 1]
    itl = [float(g) for t in timings for g in np.diff(t.chunk_times_s)]
    tokens = sum(t.output_tokens for t in timings)
    wall_s = round(wall_s, 6)  # the rates below are computed from the reported wall time
    return {
        "concurrency": concurrency,
        "requests": len(timings) + len(errors),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": wall_s,
        "output_tokens": tokens,
        "requests_per_s": round(len(timings) / wall_s, 4),
        "output_tokens_per_s": round(tokens / wall_s, 3),
        **_percentiles("ttft", [t.ttft_s for t in timings]),
        **_percentiles("tpot", tpot),
        **_percentiles("itl", itl),
        **_percentiles("e2e", [t.e2e_s for t in timings]),
    }


async def run_level(client, cfg: ServeBenchConfig, model: str, conversation: Callable[[int], list[dict]], concurrency: int) -> dict:  # fmt: skip
    gate = asyncio.Semaphore(concurrency)
    timings: list[RequestTiming] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            try:
                timings.append(await timed_request(client, model, conversation(i), cfg.max_tokens))
            except Exception as error:  # a failed request is counted and reported, the level goes on
                errors.append(f"{type(error).__name__}: {error}"[:300])

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(max(cfg.requests, 2 * concurrency))))
    return level_result(concurrency, timings, errors, time.perf_counter() - start)


async def _first_model(client) -> str:
    models = await client.models.list()
    if not models.data:
        raise RuntimeUserError("the gateway lists no models; pass --model")
    return models.data[0].id


async def _bench(cfg: ServeBenchConfig, report: ServeReport, log) -> None:
    import openai

    client = openai.AsyncOpenAI(
        base_url=cfg.base_url, api_key=cfg.api_key or "EMPTY", max_retries=0, timeout=cfg.timeout_s
    )
    try:
        try:
            report.model = cfg.model or await _first_model(client)
        except openai.APIConnectionError as error:
            raise RuntimeUserError(
                f"cannot reach the gateway at {cfg.base_url} ({error}); is it running?"
            ) from None
        except openai.AuthenticationError:
            raise RuntimeUserError(
                f"{cfg.base_url} refused the API key; pass the right one with --api-key"
            ) from None
        system, prompts = load_prompts(cfg.prompts)
        images = [_image_url(i) for i in range(cfg.images)]

        def conversation(i: int) -> list[dict]:
            return messages_for(system, prompts[i % len(prompts)], images)

        log(f"warm-up request to {report.model}")
        await timed_request(client, report.model, conversation(0), min(cfg.max_tokens, 8))
        for concurrency in cfg.concurrency:
            result = await run_level(client, cfg, report.model, conversation, concurrency)
            report.results.append(result)
            log(
                f"concurrency {concurrency}: {result['output_tokens_per_s']:.1f} tok/s, "
                f"{result['requests_per_s']:.2f} req/s, TTFT p50 {_ms(result['ttft_p50_ms'])}, "
                f"TPOT p50 {_ms(result['tpot_p50_ms'])}, errors {result['errors']}"
            )
    finally:
        await client.close()


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def run_serve_bench(cfg: ServeBenchConfig, log: Callable[[str], None]) -> dict:
    """Every concurrency level in turn; Ctrl-C ends the run with the levels that completed."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items() if k != "api_key"}
    report = ServeReport(url=cfg.base_url, model=cfg.model or "", config=config,
                         prompt_set=str(cfg.prompts or PROMPTS.name))  # fmt: skip
    try:
        asyncio.run(_bench(cfg, report, log))
    except KeyboardInterrupt:
        report.interrupted = True
        log("interrupted: reporting the concurrency levels that completed")
    return report.as_dict()


class Server(StrEnum):
    GATEWAY = "gateway"  # `autoglm-trt serve --replicas N`: Triton + our OpenAI gateway
    DYNAMO = "dynamo"  # `autoglm-trt serve --dynamo --workers N`: Dynamo's frontend + our workers


class ServerSpec(NamedTuple):
    """One server `bench serve --engines` starts, benches and stops: our gateway with N LLM
    replicas, or NVIDIA Dynamo's OpenAI frontend with N of our workers."""

    server: Server
    instances: int

    @property
    def name(self) -> str:
        return f"{self.server.value} x{self.instances}"


def compare_runs(reports: dict[ServerSpec, dict]) -> dict:
    """One report from `bench serve` runs against several servers (same prompts, same levels):
    the first run's report, every run's levels under "runs", and under "ratios", per run and
    concurrency level, its output tokens/s and TTFT p50 over those of the first run (our gateway
    at its first replica count) and, for a later Dynamo run, over the first Dynamo run too."""
    first = next(iter(reports))
    first_of = {}
    for spec in reports:
        first_of.setdefault(spec.server, spec)
    runs = [{"name": s.name, "server": s.server.value, "instances": s.instances, "url": r["url"],
             "results": r["results"], "interrupted": bool(r.get("interrupted"))} for s, r in reports.items()]  # fmt: skip
    report = {**reports[first], "runs": runs, "interrupted": any(r["interrupted"] for r in runs)}
    report["ratios"] = [
        row
        for spec in reports
        for base in dict.fromkeys((first, first_of[spec.server]))
        if base != spec
        for row in _ratios(spec, reports[spec], base, reports[base])
    ]
    return report


def _ratios(spec: ServerSpec, report: dict, base: ServerSpec, base_report: dict) -> list[dict]:
    levels = {r["concurrency"]: r for r in base_report["results"]}
    return [
        {
            "run": spec.name,
            "over": base.name,
            "concurrency": level["concurrency"],
            "throughput_ratio": _ratio(level, levels[level["concurrency"]], "output_tokens_per_s"),
            "ttft_p50_ratio": _ratio(level, levels[level["concurrency"]], "ttft_p50_ms"),
        }
        for level in report["results"]
        if level["concurrency"] in levels
    ]


def comparison_table(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ratio table of a compared report: per concurrency level and run, its
    output tokens/s and TTFT p50, then both over each base run's (1.00 on the base's own row, "—"
    where that run is not compared with that base)."""
    bases = list(dict.fromkeys(r["over"] for r in report["ratios"]))
    ratios = {(r["run"], r["over"], r["concurrency"]): r for r in report["ratios"]}
    header = ["conc", "server", "out tok/s", "TTFT p50 ms"]
    header += [f"{what} vs {base}" for base in bases for what in ("tok/s", "TTFT")]
    rows = []
    for conc in sorted({level["concurrency"] for run in report["runs"] for level in run["results"]}):
        for run in report["runs"]:
            level = next((r for r in run["results"] if r["concurrency"] == conc), None)
            if level is None:
                continue
            row = [
                str(conc),
                run["name"],
                _num(level["output_tokens_per_s"], ".1f"),
                _num(level["ttft_p50_ms"], ".1f"),
            ]
            for base in bases:
                same = {"throughput_ratio": 1.0, "ttft_p50_ratio": 1.0} if base == run["name"] else {}
                ratio = ratios.get((run["name"], base, conc), same)
                row += [_num(ratio.get("throughput_ratio"), ".2f"), _num(ratio.get("ttft_p50_ratio"), ".2f")]
            rows.append(row)
    return header, rows


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _ratio(level: dict, base: dict, key: str) -> float | None:
    value, over = level.get(key), base.get(key)
    return round(value / over, 3) if value is not None and over else None
