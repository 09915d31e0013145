"""The model's tokenizer and chat template, from the copy kept beside the engines."""

from __future__ import annotations

import json
from pathlib import Path


class TextTokenizer:
    def __init__(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(directory)
        generation = directory / "generation_config.json"
        eos = json.loads(generation.read_text()).get("eos_token_id") if generation.is_file() else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.hf.eos_token_id is not None:
            eos.append(self.hf.eos_token_id)
        self.stop_token_ids: tuple[int, ...] = tuple(sorted(set(eos)))

    @property
    def has_chat_template(self) -> bool:
        return bool(self.hf.chat_template)

    def encode(
        self, text: str, chat: bool = False, system: str | None = None, **template_kwargs
    ) -> list[int]:
        if not chat:
            return self.hf.encode(text)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": text}
        ]
        rendered = self.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **template_kwargs
        )
        return self.hf.encode(rendered, add_special_tokens=False)

    def decode(self, token_ids: list[int]) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=True)
