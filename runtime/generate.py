"""Generation over the paged decoder: prefill a batch of prompts, then decode one token per step.

A static batch (at most max_batch prompts share each engine call); the in-flight scheduler that
admits new requests between steps builds on the same PagedTextDecoder.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime.engine_loader import choose_component_precision, load_engine
from runtime.errors import PromptTooLongError, RuntimeUserError
from runtime.kv import KVCacheManager
from runtime.manifest import Manifest
from runtime.paged_decoder import DecoderLimits, PagedTextDecoder, StepInput
from runtime.prompt import PreparedPrompt
from runtime.sampling import Sampler, SamplingParams, make_generator
from runtime.tokenizer import TextTokenizer

COMPONENT = "text_decoder"


@dataclass(frozen=True)
class GenerationTimings:
    """Measured speed of one prompt (time.perf_counter around the real engine steps).

    Prompts that run as one batch share each engine call, so each is charged the wall time of the
    calls it took part in: the one prefill call, and the decode steps while it was still generating.
    Rates are per sequence; the sum over a batch's prompts is the batch's throughput.
    """

    load_s: float  # loading the text decoder engine (once per generator)
    batch: int  # prompts that shared the engine calls
    prompt_tokens: int
    prefill_ms: float  # the prefill call (which also yields the first generated token)
    prefill_tokens_per_s: float  # prompt_tokens / prefill time
    generated_tokens: int
    decode_ms: float  # the decode steps that produced tokens 2..generated_tokens
    decode_tokens_per_s: float | None  # (generated_tokens - 1) / decode time; None with one token

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        decode = (
            f"decode {self.generated_tokens - 1} tokens in {self.decode_ms:.1f} ms "
            f"({self.decode_tokens_per_s:.1f} tok/s)"
            if self.decode_tokens_per_s is not None
            else "decode 0 tokens"
        )
        return (
            f"load {self.load_s:.2f} s, prefill {self.prompt_tokens} tokens in {self.prefill_ms:.1f} ms "
            f"({self.prefill_tokens_per_s:.1f} tok/s), {decode}, {self.generated_tokens} generated, "
            f"batch {self.batch}"
        )


class Generated(NamedTuple):
    token_ids: list[int]
    finish_reason: str
    timings: GenerationTimings


@dataclass(frozen=True)
class Completion:
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (a stop token was produced, and is included) or "length"
    timings: GenerationTimings | None = None


def choose_precision(manifest: Manifest, requested: str) -> str:
    return choose_component_precision(manifest, COMPONENT, requested)


class TextGenerator:
    def __init__(
        self,
        engines_dir: Path,
        precision: str = "auto",
        threads: int = 0,
        kv_blocks: int | None = None,
        spinning: bool = True,
    ):
        self.manifest = Manifest.load(engines_dir)
        self.precision = choose_precision(self.manifest, precision)
        self.limits = DecoderLimits.from_manifest(self.manifest.decoder)
        start = time.perf_counter()
        engine = load_engine(self.manifest, engines_dir, COMPONENT, self.precision, threads, spinning)
        self.load_s = time.perf_counter() - start
        self.tokenizer = TextTokenizer(engines_dir / self.manifest.tokenizer_dir)
        self.engines_dir, self.threads = engines_dir, threads
        self._media = None  # (LocalEncoders, MultimodalPromptBuilder), made on first media prompt
        # np.zeros maps pages lazily: a full-capacity pool costs memory only for blocks used.
        blocks_per_seq = -(-self.limits.max_seq_len // self.limits.block_size)
        kv_blocks = kv_blocks or 1 + self.limits.max_batch * blocks_per_seq
        self.kv = KVCacheManager(kv_blocks, self.limits.block_size, enable_prefix_caching=False)
        self.decoder = PagedTextDecoder(engine, self.limits, self.kv)
        self.sampler = Sampler()

    def check_prompt(self, prompt: list[int]) -> None:
        limit = self.limits.max_seq_len
        if not prompt:
            raise RuntimeUserError("the prompt is empty after tokenization; give some text")
        if len(prompt) >= limit:
            raise PromptTooLongError(
                f"the prompt has {len(prompt)} tokens but the engines were built for at most {limit} "
                f"(prompt + completion); shorten the prompt or rebuild with a larger --max-seq-len"
            )

    def generate_ids(
        self, prompts: list[list[int]] | list[PreparedPrompt], params: SamplingParams
    ) -> list[tuple[list[int], str]]:
        """(token ids, finish reason) per prompt; `generate_timed` adds each prompt's timings."""
        return [(out.token_ids, out.finish_reason) for out in self.generate_timed(prompts, params)]

    def generate_timed(
        self, prompts: list[list[int]] | list[PreparedPrompt], params: SamplingParams
    ) -> list[Generated]:
        prompts = [p if isinstance(p, PreparedPrompt) else PreparedPrompt(list(p)) for p in prompts]
        for prompt in prompts:
            self.check_prompt(prompt.token_ids)
        results: list[Generated] = []
        for start in range(0, len(prompts), self.limits.max_batch):
            results += self._generate_batch(prompts[start : start + self.limits.max_batch], params, start)
        return results

    def _generate_batch(
        self, prompts: list[PreparedPrompt], params: SamplingParams, offset: int
    ) -> list[Generated]:
        ids = [f"seq-{offset + i}" for i in range(len(prompts))]
        # Each row gets its own generator so a seeded batch samples like the same prompts alone.
        generators = [
            make_generator(None if params.seed is None else params.seed + offset + i)
            for i in range(len(prompts))
        ]
        outputs: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * len(prompts)
        prefill_s, decode_s = 0.0, [0.0] * len(prompts)  # wall time of the steps each row took part in
        try:
            pending = [p.prefill_input(rid) for rid, p in zip(ids, prompts, strict=True)]
            rows = list(range(len(prompts)))
            first = True
            while pending:
                start = time.perf_counter()  # one step: slots, engine call, K/V write, sampling
                for item in pending:
                    if self.kv.allocate_slots(item.request_id, item.past_len + len(item.token_ids)) is None:
                        raise RuntimeUserError("the KV pool is too small for this batch; use fewer prompts")
                logits = self.decoder.step(pending)
                tokens = self.sampler.sample(logits, [params] * len(rows), [generators[r] for r in rows])
                elapsed = time.perf_counter() - start
                if first:
                    prefill_s, first = elapsed, False
                else:
                    for row in rows:
                        decode_s[row] += elapsed
                next_pending, next_rows = [], []
                for item, row, token in zip(pending, rows, tokens.tolist(), strict=True):
                    outputs[row].append(token)
                    total = len(prompts[row]) + len(outputs[row])
                    if token in params.stop_token_ids:
                        finish[row] = "stop"
                    elif len(outputs[row]) >= params.max_tokens or total >= self.limits.max_seq_len:
                        finish[row] = "length"
                    else:
                        next_pending.append(prompts[row].decode_input(item.request_id, token, total - 1))
                        next_rows.append(row)
                pending, rows = next_pending, next_rows
        finally:
            for rid in ids:
                self.kv.free(rid)
        return [
            Generated(out, reason or "length", self._timings(len(prompts), len(p), prefill_s, len(out), dec))
            for p, out, reason, dec in zip(prompts, outputs, finish, decode_s, strict=True)
        ]

    def _timings(
        self, batch: int, prompt_tokens: int, prefill_s: float, generated: int, decode_s: float
    ) -> GenerationTimings:
        decoded = generated - 1  # the first token comes from the prefill call
        return GenerationTimings(
            load_s=round(self.load_s, 4),
            batch=batch,
            prompt_tokens=prompt_tokens,
            prefill_ms=round(prefill_s * 1000, 3),
            prefill_tokens_per_s=round(prompt_tokens / prefill_s, 2),
            generated_tokens=generated,
            decode_ms=round(decode_s * 1000, 3),
            decode_tokens_per_s=round(decoded / decode_s, 2) if decoded > 0 else None,
        )

    def generate(
        self, prompts: list[str], params: SamplingParams, chat: bool = False, system: str | None = None
    ) -> list[Completion]:
        if not params.stop_token_ids:
            params = replace(params, stop_token_ids=self.tokenizer.stop_token_ids)
        encoded = [self.tokenizer.encode(text, chat=chat, system=system) for text in prompts]
        results = self.generate_timed(encoded, params)
        return [
            Completion(
                prompt, out.token_ids, self.tokenizer.decode(out.token_ids), out.finish_reason, out.timings
            )
            for prompt, out in zip(encoded, results, strict=True)
        ]

    @property
    def encoders(self):
        """The image/audio encoders (runtime.multimodal.LocalEncoders); each engine loads on first use."""
        return self._media_parts()[0]

    def _media_parts(self):
        if self._media is None:
            from runtime.multimodal import LocalEncoders, MultimodalPromptBuilder

            encoders = LocalEncoders(self.engines_dir, self.manifest, self.precision, self.threads)
            builder = MultimodalPromptBuilder(self.engines_dir, self.manifest, self.tokenizer)
            self._media = (encoders, builder)
        return self._media

    def prepare_media(
        self,
        text: str,
        images: list[bytes],
        audios: list[bytes],
        system: str | None = None,
        **template_kwargs,
    ) -> PreparedPrompt:
        """A chat prompt of one user turn: the images, then the audio clips, then `text`."""
        parts = [{"type": "image"} for _ in images] + [{"type": "audio"} for _ in audios]
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": [*parts, {"type": "text", "text": text}]}
        ]
        encoders, builder = self._media_parts()
        return builder.prepare(messages, images, audios, encoders, **template_kwargs)

    def generate_media(
        self,
        prompts: list[str],
        images: list[bytes],
        audios: list[bytes],
        params: SamplingParams,
        system: str | None = None,
    ) -> list[Completion]:
        """Like `generate` with chat=True, each prompt preceded by the same images and audio clips."""
        if not params.stop_token_ids:
            params = replace(params, stop_token_ids=self.tokenizer.stop_token_ids)
        prepared = [self.prepare_media(text, images, audios, system) for text in prompts]
        results = self.generate_timed(prepared, params)
        return [
            Completion(
                prompt.token_ids,
                out.token_ids,
                self.tokenizer.decode(out.token_ids),
                out.finish_reason,
                out.timings,
            )
            for prompt, out in zip(prepared, results, strict=True)
        ]

    def score(self, token_ids: list[int]) -> np.ndarray:
        """Logits [S, V] for every position of one sequence (for accuracy and perplexity)."""
        self.check_prompt(token_ids)
        self.kv.allocate_slots("score", len(token_ids))
        try:
            return self.decoder.step([StepInput("score", token_ids, 0)], all_logits=True)[0]
        finally:
            self.kv.free("score")
