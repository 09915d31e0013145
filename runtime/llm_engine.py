"""The one object that runs a text decoder: engines → precision → decoder engine → KV pool → scheduler.

`LLMEngine` loads the manifest, picks the precision, loads the decoder engine (the image and audio
encoders on first use), sizes the KV pool and owns the in-flight scheduler. Everything that
generates goes through it: `generate` and `bench` call `generate`/`score` here; the Triton `llm`
model's service (runtime/server/llm_service.py) drives `add`/`step`/`abort` from its loop thread.
Offline generation is the server's loop run to completion: the same admission, the same
sampling, the same finish rules.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime.completion import Completion, Generated, GenerationTimings
from runtime.engine_loader import choose_component_precision, load_decoder
from runtime.errors import PromptTooLongError, RuntimeUserError
from runtime.kv import KVCacheManager
from runtime.manifest import Manifest
from runtime.paged_decoder import DecoderLimits, PagedTextDecoder, StepInput
from runtime.prompt import PreparedPrompt
from runtime.request import Request, TokenEvent
from runtime.sampling import SamplingParams, make_generator
from runtime.scheduler import Scheduler, SchedulerConfig
from runtime.tokenizer import TextTokenizer

COMPONENT = "text_decoder"


class LLMEngine:
    """One model's decoder, KV pool and scheduler. Not thread-safe: one thread drives it (the
    server's loop thread, or the caller of `generate`)."""

    def __init__(
        self,
        engines_dir: Path,
        precision: str = "auto",
        threads: int = 0,
        kv_blocks: int | None = None,
        max_batch: int | None = None,
        prefix_caching: bool = False,
        devices: tuple[int, ...] = (),
    ):
        """`precision` auto: int4 > int8 > fp16 > fp32, whichever is built. `kv_blocks` None: room
        for `max_batch` sequences of the engines' max_seq_len. `max_batch` None: the batch the
        engines were built for (their manifest). `devices`: the CUDA device of each pipeline
        stage (runtime/stages.py), () the first there is; the CPU where there is none."""
        self.engines_dir, self.threads = engines_dir, threads
        self.manifest = Manifest.load(engines_dir)
        self.precision = choose_component_precision(self.manifest, COMPONENT, precision)
        self.limits = DecoderLimits.from_manifest(self.manifest.decoder)
        start = time.perf_counter()
        engine = load_decoder(self.manifest, engines_dir, self.precision, threads, devices)
        self.load_s = time.perf_counter() - start
        self.tokenizer_dir = engines_dir / self.manifest.tokenizer_dir
        self.tokenizer = TextTokenizer(self.tokenizer_dir)
        self._media = None  # (LocalEncoders, MultimodalPromptBuilder), made on first media prompt
        max_batch = max_batch or self.limits.max_batch
        # The pool's pages are mapped lazily: a full-capacity pool costs memory only for blocks used.
        blocks_per_seq = -(-self.limits.max_seq_len // self.limits.block_size)
        self.kv = KVCacheManager(
            kv_blocks or 1 + max_batch * blocks_per_seq, self.limits.block_size, prefix_caching
        )
        self.decoder = PagedTextDecoder(engine, self.limits, self.kv)
        self.scheduler = Scheduler(self.decoder, SchedulerConfig(max_batch, self.limits.max_seq_len))

    # ---- the scheduler's interface (the server's loop) -----------------------------------
    def add(self, request: Request) -> None:
        """Queue a request (RuntimeUserError for one that can never run)."""
        self.scheduler.add(request)

    def abort(self, request_id: str) -> bool:
        return self.scheduler.abort(request_id)

    def step(self) -> list[TokenEvent]:
        return self.scheduler.step()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    # ---- offline generation ----------------------------------------------------------------
    def generate_ids(
        self, prompts: list[list[int]] | list[PreparedPrompt], params: SamplingParams
    ) -> list[tuple[list[int], str]]:
        """(token ids, finish reason) per prompt; `generate_timed` adds each prompt's timings."""
        return [(out.token_ids, out.finish_reason) for out in self.generate_timed(prompts, params)]

    def generate_timed(
        self, prompts: list[list[int]] | list[PreparedPrompt], params: SamplingParams
    ) -> list[Generated]:
        """Every prompt through the scheduler, to completion. Each prompt is charged the wall time
        of the steps it took part in: the step that prefilled it (and sampled its first token),
        then every step that gave it a token. Prompts that share steps share their time."""
        prompts = [p if isinstance(p, PreparedPrompt) else PreparedPrompt(list(p)) for p in prompts]
        if self.scheduler.has_work:
            raise RuntimeError("generate runs alone: this engine is serving requests")
        requests = []
        try:
            for i, prompt in enumerate(prompts):
                # Each prompt its own generator: a seeded batch samples like the same prompts alone.
                seed = None if params.seed is None else params.seed + i
                request = Request(f"gen-{i}", prompt, params, make_generator(seed))
                self.scheduler.add(request)
                requests.append(request)
            prefill_s = [0.0] * len(prompts)
            decode_s = [0.0] * len(prompts)
            batch = [0] * len(prompts)
            index = {r.request_id: i for i, r in enumerate(requests)}
            while self.scheduler.has_work:
                start = time.perf_counter()
                events = self.scheduler.step()
                elapsed = time.perf_counter() - start
                for event in events:
                    i = index[event.request_id]
                    if len(requests[i].output_ids) == 1:
                        prefill_s[i], batch[i] = elapsed, len(events)
                    else:
                        decode_s[i] += elapsed
        finally:
            for request in requests:
                self.scheduler.abort(request.request_id)  # only those an error left behind
        return [
            Generated(
                list(r.output_ids),
                r.finish_reason or "length",
                self._timings(batch[i], r.num_prompt, prefill_s[i], len(r.output_ids), decode_s[i]),
            )
            for i, r in enumerate(requests)
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
        if not token_ids:
            raise RuntimeUserError("nothing to score: the text is empty after tokenization")
        if len(token_ids) >= self.limits.max_seq_len:
            raise PromptTooLongError(
                f"scoring takes at most {self.limits.max_seq_len - 1} tokens, got {len(token_ids)}"
            )
        if self.kv.allocate_slots("score", len(token_ids)) is None:
            raise RuntimeUserError("the KV pool has no room to score this text; it is serving requests")
        try:
            return self.decoder.step([StepInput("score", token_ids, 0)], all_logits=True)[0]
        finally:
            self.kv.free("score")
