"""Build a PreparedPrompt from a wire request: chat template or raw prompt, media through encoders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from runtime.errors import PromptTooLongError, RuntimeUserError
from runtime.manifest import Manifest
from runtime.prompt import PreparedPrompt
from runtime.server.wire import GenerateRequest
from runtime.tokenizer import TextTokenizer

MEDIA_COMPONENTS = {"image": "vision_encoder", "audio": "audio_encoder"}


class NoEncoderError(RuntimeUserError):
    """The request carries an image or audio but the engines have no encoder for it."""


def count_media(messages: list[dict]) -> dict[str, int]:
    counts = {"image": 0, "audio": 0}
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in counts:
                    counts[kind] += 1
    return counts


def text_only(messages: list[dict]) -> list[dict]:
    """Messages with list contents flattened to strings (what plain-text chat templates expect)."""
    flat = []
    for message in messages:
        content = message.get("content", "")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise RuntimeUserError(f"message content must be a string or a list of parts, got {content!r}")
        flat.append({**message, "content": content})
    return flat


def longest_token_chars(tokenizer_dir: Path) -> int | None:
    """Characters of the longest vocabulary entry, added tokens included: no token covers more
    of the text (a byte-level entry has one character per byte, so it over-counts, never under).
    None when the directory has no tokenizer.json."""
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data.get("model", {}).get("vocab") or {}
    entries = vocab.keys() if isinstance(vocab, dict) else (pair[0] for pair in vocab)  # BPE | Unigram
    added = (token.get("content", "") for token in data.get("added_tokens", []))
    return max(map(len, [*entries, *added]), default=0) or None


@dataclass(frozen=True)
class PromptLimits:
    """What a prompt may measure before it is tokenized: each token covers at most `token_chars`
    characters, so a text longer than `max_tokens * token_chars` cannot fit, and each message
    renders at least one token. Checked in the gateway and again in the service, both O(1) per
    message, so an oversized prompt is refused before it is tokenized or takes a scheduler slot."""

    max_tokens: int  # the engines' max_seq_len (prompt + completion)
    token_chars: int  # the longest token, in characters

    @property
    def max_chars(self) -> int:
        return self.max_tokens * self.token_chars

    def check(self, chars: int, messages: int = 0) -> None:
        if chars > self.max_chars:
            raise PromptTooLongError(
                f"the prompt has {chars:,} characters; the engines take at most {self.max_tokens} tokens "
                f"(prompt + completion) and no token is longer than {self.token_chars} characters, so at "
                f"most {self.max_chars:,} characters; shorten the prompt"
            )
        if messages > self.max_tokens:
            raise PromptTooLongError(
                f"the conversation has {messages:,} messages; the engines take at most "
                f"{self.max_tokens} tokens and every message takes at least one"
            )


class PromptFactory:
    def __init__(self, engines_dir: Path, manifest: Manifest, tokenizer: TextTokenizer) -> None:
        self.engines_dir = engines_dir
        self.manifest = manifest
        self.tokenizer = tokenizer
        self._multimodal = None  # built on the first media request

    def has_component(self, component: str) -> bool:
        return bool(self.manifest.precisions(component))

    def prepare(
        self, request: GenerateRequest, images: list[bytes], audios: list[bytes], encoders=None
    ) -> PreparedPrompt:
        if request.prompt is not None:
            if images or audios:
                raise RuntimeUserError("images and audio need chat messages, not a plain prompt")
            return PreparedPrompt(self.tokenizer.hf.encode(request.prompt))
        messages = request.messages or []
        counts = count_media(messages)
        if counts["image"] != len(images) or counts["audio"] != len(audios):
            raise RuntimeUserError(
                f"the messages reference {counts['image']} image(s) and {counts['audio']} audio clip(s) "
                f"but {len(images)} and {len(audios)} were attached"
            )
        if not self.tokenizer.has_chat_template:
            raise RuntimeUserError(
                f"the tokenizer in {self.engines_dir} has no chat template; use /v1/completions instead"
            )
        template_kwargs = dict(request.template_kwargs)
        if request.continue_final_message:
            if messages[-1].get("role") != "assistant":
                raise RuntimeUserError("continue_final_message needs the last message to be the assistant's")
            template_kwargs.update(continue_final_message=True, add_generation_prompt=False)
        if images or audios:
            if request.continue_final_message:
                raise RuntimeUserError("continue_final_message is not supported with images or audio")
            return self._prepare_media(messages, images, audios, encoders, template_kwargs)
        try:
            template_kwargs.setdefault("add_generation_prompt", True)
            rendered = self.tokenizer.hf.apply_chat_template(
                text_only(messages), tokenize=False, **template_kwargs
            )
        except TemplateError as error:  # the template's own words (raise_exception) or jinja's
            raise RuntimeUserError(f"the chat template rejected these messages: {error}") from None
        except Exception as error:  # e.g. a template variable of a type it cannot use: the detail
            # stays in the log (LLMService logs the cause under the request id)
            raise RuntimeUserError(
                "the chat template could not render these messages with these chat_template_kwargs"
            ) from error
        return PreparedPrompt(self.tokenizer.hf.encode(rendered, add_special_tokens=False))

    def _prepare_media(self, messages, images, audios, encoders, template_kwargs) -> PreparedPrompt:
        name = self.manifest.model.get("name", str(self.engines_dir))
        for kind, items in (("image", images), ("audio", audios)):
            component = MEDIA_COMPONENTS[kind]
            if items and not self.has_component(component):
                raise NoEncoderError(
                    f"this model ({name}) has no {component.replace('_', ' ')}, so it cannot take {kind} "
                    f"input; send text only, or serve engines built with a {component} "
                    f"(e.g. glm4v-tiny or a GLM-4.1V model)"
                )
        try:
            from runtime.multimodal import MultimodalPromptBuilder
        except ImportError:
            raise NoEncoderError(
                "this build has no multimodal prompt assembly (runtime.multimodal); send text only"
            ) from None
        if encoders is None:
            raise NoEncoderError("no media encoders are available to this server; send text only")
        if self._multimodal is None:
            self._multimodal = MultimodalPromptBuilder(self.engines_dir, self.manifest, self.tokenizer)
        return self._multimodal.prepare(messages, images, audios, encoders, **template_kwargs)
