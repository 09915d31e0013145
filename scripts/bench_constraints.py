"""What grammar-constrained decoding costs per token: the same batch decoded free and constrained.

    .venv/bin/python scripts/bench_constraints.py --engines engines/smollm2-135m [--batch 8]

Runs `batch` requests through LLMEngine's scheduler twice, greedy, free and then each under the
same JSON schema (llguidance), and reports the grammar's time per token (the mask computed and
applied, and the token consumed) and the decode step time of both runs, over the steps where all
`batch` rows decode. Ratios from one run on one machine only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from runtime.constraints import GrammarCompiler, GrammarConstraint
from runtime.llm_engine import LLMEngine
from runtime.prompt import PreparedPrompt
from runtime.request import Request
from runtime.sampling import SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def run(
    engine: LLMEngine, batch: int, tokens: int, compiler: GrammarCompiler | None
) -> tuple[list[float], int]:
    prompt = PreparedPrompt(engine.tokenizer.encode("Describe a person as JSON.", chat=True))
    params = SamplingParams(max_tokens=tokens, stop_token_ids=engine.tokenizer.stop_token_ids)
    for i in range(batch):
        constraint = compiler.compile({"type": "json_schema", "schema": SCHEMA}) if compiler else None
        engine.add(Request(f"r{i}", prompt, params, constraint=constraint))
    steps, generated, first = [], 0, True
    while engine.has_work:
        start = time.perf_counter()
        events = engine.step()
        took = time.perf_counter() - start
        generated += len(events)
        if len(events) == batch and not first:  # full decode steps only: rows finish at different times
            steps.append(took)
        first = False
    return steps, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    engine = LLMEngine(args.engines, threads=args.threads)
    start = time.perf_counter()
    compiler = GrammarCompiler(engine.tokenizer.hf, engine.limits.vocab_size, engine.tokenizer.stop_token_ids)
    print(
        f"{engine.precision}, vocabulary {engine.limits.vocab_size}: tokenizer info {time.perf_counter() - start:.2f} s"
    )
    masks: list[float] = []
    mask, accept = GrammarConstraint.mask, GrammarConstraint.accept

    def timed_mask(self, logits):
        begin = time.perf_counter()
        mask(self, logits)
        masks.append(time.perf_counter() - begin)

    def timed_accept(self, token_id):
        begin = time.perf_counter()
        accept(self, token_id)
        masks[-1] += time.perf_counter() - begin

    GrammarConstraint.mask, GrammarConstraint.accept = timed_mask, timed_accept
    run(engine, args.batch, 4, None)  # warm-up
    free, constrained, count = [], [], 0
    for _ in range(args.rounds):  # interleaved: this machine's speed drifts within minutes
        free += run(engine, args.batch, args.tokens, None)[0]
        steps, generated = run(engine, args.batch, args.tokens, compiler)
        constrained, count = constrained + steps, count + generated
    free_ms, constrained_ms = statistics.median(free) * 1e3, statistics.median(constrained) * 1e3
    print(
        f"decode step, batch {args.batch}: free {free_ms:.2f} ms, constrained {constrained_ms:.2f} ms "
        f"({constrained_ms / free_ms:.2f}x)"
    )
    print(
        f"grammar per token (mask + consume): median {statistics.median(masks) * 1e6:.0f} us, "
        f"p95 {sorted(masks)[int(len(masks) * 0.95)] * 1e6:.0f} us over {len(masks)} tokens ({count} generated)"
    )


if __name__ == "__main__":
    main()
