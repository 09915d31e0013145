"""Chat messages with images and audio → a PreparedPrompt for the text decoder.

The chat template renders one placeholder per media part (`<|begin_of_image|><|image|><|end_of_image|>`,
`<|begin_of_audio|><|audio|><|end_of_audio|>`); each placeholder token is then repeated once per
embedding row its encoder produces (as Hugging Face's GLM-4V processor repeats `<|image|>`), the
encoder outputs replace those tokens' embeddings in the decoder, and images get GLM-4V's 3-D rope
positions. Audio tokens are positioned like text (one step per token on all three axes).
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np

from runtime.errors import MediaInputError, MissingEncoderError
from runtime.manifest import Manifest
from runtime.multimodal.audio import AudioPreprocessor, AudioSpec
from runtime.multimodal.encoders import AUDIO, VISION, MediaEncoders
from runtime.multimodal.image import ImagePreprocessor, ImageSpec
from runtime.multimodal.rope import rope_index
from runtime.prompt import PreparedPrompt
from runtime.tokenizer import TextTokenizer

KINDS = {"image": VISION, "audio": AUDIO}


def count_parts(messages: list[dict]) -> dict[str, int]:
    """Image and audio parts in chat messages; refuses malformed messages with a clear message."""
    counts = {"image": 0, "audio": 0}
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise MediaInputError(
                f"messages[{i}].content must be a string or a list of parts, got {content!r}"
            )
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "image", "audio"):
                raise MediaInputError(
                    f"messages[{i}].content[{j}] has type {kind!r}; expected 'text', 'image' or 'audio'"
                )
            if kind in counts:
                counts[kind] += 1
    return counts


class MultimodalPromptBuilder:
    def __init__(self, engines_dir: Path, manifest: Manifest, tokenizer: TextTokenizer) -> None:
        self.engines_dir = engines_dir
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.position_rank = manifest.decoder.get("position_rank", 1)
        self.max_images = manifest.axes.get("batch", [1, 8])[1]  # one vision encoder batch
        self._image: ImagePreprocessor | None = None
        self._audio: AudioPreprocessor | None = None

    def _info(self, kind: str) -> dict:
        component = KINDS[kind]
        info = self.manifest.encoders.get(component)
        if info is None or not self.manifest.precisions(component):
            name = self.manifest.model.get("name", str(self.engines_dir))
            raise MissingEncoderError(
                f"the engines in {self.engines_dir} ({name}) have no {component.replace('_', ' ')}, so they "
                f"cannot take {kind} input; send text only, or use engines of a model with one "
                f"(e.g. glm4v-tiny or GLM-4.1V)"
            )
        return info

    def _pixels(self, images: list[bytes]) -> np.ndarray:
        if self._image is None:
            self._image = ImagePreprocessor(ImageSpec.from_info(self._info("image")))
        return self._image(images)

    def _features(self, audios: list[bytes]) -> tuple[np.ndarray, list[int]]:
        if self._audio is None:
            self._audio = AudioPreprocessor(AudioSpec.from_info(self._info("audio")))
        return self._audio(audios)

    def prepare(
        self,
        messages: list[dict],
        images: list[bytes],
        audios: list[bytes],
        encoders: MediaEncoders,
        **template_kwargs,
    ) -> PreparedPrompt:
        """Validate and preprocess the media, run the encoders, and splice their outputs in.

        `images`/`audios` are raw files in the order their parts appear in `messages`.
        """
        counts = count_parts(messages)
        if (counts["image"], counts["audio"]) != (len(images), len(audios)):
            raise MediaInputError(
                f"the messages have {counts['image']} image part(s) and {counts['audio']} audio part(s) "
                f"but {len(images)} image(s) and {len(audios)} audio clip(s) were given"
            )
        infos = {kind: self._info(kind) for kind, items in (("image", images), ("audio", audios)) if items}
        if len(images) > self.max_images:
            raise MediaInputError(
                f"{len(images)} images were given; this model takes at most {self.max_images} per prompt"
            )
        # Everything the user sent is checked before any encoder runs.
        pixels = self._pixels(images) if images else None
        features, windows = self._features(audios) if audios else (None, [])
        ids = self._render(messages, template_kwargs)
        for kind, info in infos.items():
            found = ids.count(info["token_ids"]["placeholder"])
            if found != counts[kind]:
                raise MediaInputError(
                    f"the chat template placed {found} {kind} placeholder(s) for {counts[kind]} {kind}(s); "
                    f"remove {kind} placeholder tokens from the text"
                )
        rows: list[np.ndarray] = []  # per media item, in prompt order, [T, H]
        by_token: dict[int, list[np.ndarray]] = {}
        if pixels is not None:
            by_token[infos["image"]["token_ids"]["placeholder"]] = list(
                self._check(encoders.encode_images(pixels), infos["image"], len(images))
            )
        if features is not None:
            out = self._check(encoders.encode_audio(features), infos["audio"], sum(windows))
            bounds = np.cumsum([0, *windows])
            clips = [out[a:b].reshape(-1, out.shape[-1]) for a, b in itertools.pairwise(bounds)]
            by_token[infos["audio"]["token_ids"]["placeholder"]] = clips
        expanded: list[int] = []
        positions: list[np.ndarray] = []
        queues = {token: iter(items) for token, items in by_token.items()}
        for token in ids:
            if token in queues:
                embeds = next(queues[token])
                positions.append(len(expanded) + np.arange(len(embeds)))
                rows.append(embeds)
                expanded += [token] * len(embeds)
            else:
                expanded.append(token)
        rope, delta = None, 0
        if images and self.position_rank == 3:
            side = self.manifest.encoders[VISION]
            _, height, width = side["input_shape"]
            unit = side["preprocessor"]["patch_size"] * side["merge_size"]
            grid = (height // unit, width // unit)
            rope, delta = rope_index(
                expanded, infos["image"]["token_ids"]["placeholder"], [grid] * len(images)
            )
        hashes = tuple(
            hashlib.sha256(kind.encode() + b"\0" + data).hexdigest()
            for kind, items in (("image", images), ("audio", audios))
            for data in items
        )
        return PreparedPrompt(
            token_ids=expanded,
            positions=rope,
            rope_delta=delta,
            media_hashes=hashes,
            media_embeds=np.concatenate(rows).astype(np.float32, copy=False) if rows else None,
            media_positions=np.concatenate(positions).astype(np.int64) if rows else None,
        )

    def _render(self, messages: list[dict], template_kwargs: dict) -> list[int]:
        hf = self.tokenizer.hf
        try:
            text = hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **template_kwargs
            )
        except Exception as error:  # jinja raises many types for conversations a template rejects
            raise MediaInputError(f"the chat template rejected these messages: {error}") from None
        return hf.encode(text, add_special_tokens=False)

    @staticmethod
    def _check(out: np.ndarray, info: dict, count: int) -> np.ndarray:
        expected = (count, info["tokens_per_item"], info["hidden_size"])
        if out.shape != expected:
            raise RuntimeError(f"{info['input']} encoder returned shape {out.shape}, expected {expected}")
        return out
