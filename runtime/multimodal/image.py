"""Image files → vision encoder inputs [3, H, W] at the engine's fixed size.

Resize policy (letterbox): the image is scaled, keeping its aspect ratio, to fit H×W with PIL's
bicubic filter, then centred on an H×W canvas filled with the processor's mean colour (which
normalises to ~0). An image that is already H×W is used as is. The canvas then goes through Hugging
Face's own GLM-4V image processor (`Glm4vImageProcessorPil`, from the model's preprocessor config),
whose resize keeps H×W unchanged, so rescaling and normalisation are exactly Hugging Face's; its
patch layout is undone with a reshape to give the [3, H, W] array the engine takes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from runtime.errors import MediaInputError

MIN_SIDE = 28  # one merged patch (14·2); anything smaller carries no usable detail
MAX_PIXELS = 64_000_000  # decoding larger images costs gigabytes; PIL itself warns at 89 MP
MAX_ASPECT = 200  # Hugging Face's GLM-4V processor refuses more extreme aspect ratios


@dataclass(frozen=True)
class ImageSpec:
    """From the manifest's `encoders.vision_encoder` block."""

    height: int
    width: int
    processor: dict  # preprocessor_config.json

    @classmethod
    def from_info(cls, info: dict) -> ImageSpec:
        _, height, width = info["input_shape"]
        return cls(height, width, info["preprocessor"])


def decode_image(data: bytes, label: str) -> Image.Image:
    """Open and check an image file's bytes; `label` names it in messages ("image 1")."""
    too_large = f"larger than the {MAX_PIXELS // 1_000_000} MP this runtime decodes; downscale it first"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise MediaInputError(f"{label} is {width}×{height} pixels, {too_large}")
            image.load()
    except MediaInputError:
        raise
    except Image.DecompressionBombError:
        raise MediaInputError(f"{label} is {too_large}") from None
    except UnidentifiedImageError:
        kind = "empty" if not data else f"not an image PIL can read (starts with {data[:8]!r})"
        raise MediaInputError(f"{label} is {kind}; send a PNG, JPEG, WebP, GIF or BMP file") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise MediaInputError(f"{label} is a damaged or truncated image ({error}); re-save it") from None
    if min(width, height) < MIN_SIDE:
        raise MediaInputError(
            f"{label} is {width}×{height} pixels; images must be at least {MIN_SIDE}×{MIN_SIDE}"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise MediaInputError(
            f"{label} is {width}×{height} pixels, an aspect ratio above {MAX_ASPECT}:1; crop it"
        )
    return image.convert("RGB")


def letterbox(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """Fit `image` into the engine's H×W keeping its aspect ratio; pad with the mean colour."""
    if image.size == (spec.width, spec.height):
        return image
    scale = min(spec.width / image.width, spec.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling(spec.processor.get("resample", 3)))
    fill = tuple(round(255 * m) for m in spec.processor["image_mean"])
    canvas = Image.new("RGB", (spec.width, spec.height), fill)
    canvas.paste(resized, ((spec.width - size[0]) // 2, (spec.height - size[1]) // 2))
    return canvas


class ImagePreprocessor:
    def __init__(self, spec: ImageSpec) -> None:
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        self.spec = spec
        config = {k: v for k, v in spec.processor.items() if k != "image_processor_type"}
        self.hf = Glm4vImageProcessorPil(**config)

    def pixel_values(self, image: Image.Image) -> np.ndarray:
        """A letterboxed RGB image → float32 [3, H, W], normalised exactly as Hugging Face does."""
        out = self.hf(images=[letterbox(image, self.spec)], return_tensors="np")
        return self.unpatchify(out["pixel_values"], out["image_grid_thw"][0])

    def unpatchify(self, patches: np.ndarray, grid_thw) -> np.ndarray:
        """Undo `Glm4vImageProcessorPil.patchify` for one image (its frames are identical copies)."""
        _, gh, gw = (int(v) for v in grid_thw)
        if (gh * self.hf.patch_size, gw * self.hf.patch_size) != (self.spec.height, self.spec.width):
            raise AssertionError(f"the image processor resized to grid {gh}×{gw}, not the engine's size")
        m, p, t = self.hf.merge_size, self.hf.patch_size, self.hf.temporal_patch_size
        x = patches.reshape(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
        x = x.transpose(4, 0, 2, 5, 1, 3, 6)  # (C, gh/m, m, p, gw/m, m, p)
        return np.ascontiguousarray(x.reshape(3, gh * p, gw * p), dtype=np.float32)

    def __call__(self, data: list[bytes]) -> np.ndarray:
        """Image files → [N, 3, H, W] float32."""
        images = [decode_image(item, f"image {i + 1}") for i, item in enumerate(data)]
        return np.stack([self.pixel_values(image) for image in images])
