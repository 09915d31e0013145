"""`autoglm-trt generate`: completions on stdout (logs and one timings line per prompt on stderr),
or JSON with --json (the timings as a `timings` object per prompt)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from builder.cli.options import Devices, parse_devices
from runtime.errors import RuntimeUserError


def generate(
    engines: Annotated[Path, typer.Option(help="Engines directory (engines/NAME).")],
    prompt: Annotated[list[str], typer.Option(help="Prompt text; repeat for a batch.")],
    precision: Annotated[
        str, typer.Option(help="fp32, fp16, int8, int4 or auto (int4 > int8 > fp16 > fp32).")
    ] = "auto",
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the model's chat template.")] = False,
    system: Annotated[str | None, typer.Option(help="System message (with --chat).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    top_k: Annotated[int, typer.Option(min=0, help="0 = off.")] = 0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling (reproducible output).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per prompt.")] = False,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads for the engine; 0 = all.")] = 0,
    devices: Devices = None,
    verify: Annotated[
        bool, typer.Option(help="Hash every engine file now, even those verified since they last changed.")
    ] = False,
    image: Annotated[
        list[Path] | None,
        typer.Option(help="Image file (PNG, JPEG, …) placed before the prompt; repeatable."),
    ] = None,
    audio: Annotated[
        list[Path] | None,
        typer.Option(help="Audio file (16 kHz PCM WAV) placed before the prompt; repeatable."),
    ] = None,
) -> None:
    """Generate text from built engines."""
    from runtime.llm_engine import LLMEngine
    from runtime.sampling import SamplingParams

    try:  # SamplingParams validates itself
        params = SamplingParams(
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_tokens=max_tokens
        )
    except ValueError as error:
        raise RuntimeUserError(str(error)) from None
    if verify:
        from runtime.engine_loader import verify_engines
        from runtime.manifest import Manifest

        verify_engines(Manifest.load(engines), engines, precision)
    llm = LLMEngine(engines, precision=precision, threads=threads, devices=parse_devices(devices))
    if chat and not llm.tokenizer.has_chat_template:
        raise RuntimeUserError(f"the tokenizer in {engines} has no chat template; drop --chat")
    if image or audio:  # media always go through the chat template, which places them
        images, audios = _read_media(image or [], "image"), _read_media(audio or [], "audio")
        completions = llm.generate_media(prompt, images, audios, params, system=system)
    else:
        completions = llm.generate(prompt, params, chat=chat, system=system)
    for number, completion in enumerate(completions, 1):
        timings = completion.timings
        if as_json:
            record = {**completion.__dict__, "precision": llm.precision, "timings": timings.as_dict()}
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(completion.text, flush=True)
            print(f"timings (prompt {number}): {timings.line()}", file=sys.stderr, flush=True)


def _read_media(paths: list[Path], kind: str) -> list[bytes]:
    from runtime.errors import MediaInputError

    data = []
    for path in paths:
        try:
            data.append(path.read_bytes())
        except OSError as error:
            raise MediaInputError(f"cannot read {kind} file {path}: {error.strerror or error}") from None
    return data
