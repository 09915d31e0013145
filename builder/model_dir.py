"""Open a Hugging Face model directory: validate it, identify its decoder family, hash it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from builder.errors import ModelDirError
from builder.export.families import DecoderFamily, family_for
from builder.presets import is_shape_only
from runtime.onnx_files import update_digest

WEIGHT_SUFFIXES = (".safetensors", ".bin")  # what from_pretrained loads
NOT_SIDE_FILES = (*WEIGHT_SUFFIXES, ".gguf")  # never copied beside the engines


@dataclass(frozen=True)
class ModelDir:
    """A validated model directory; loading the weights is a separate, explicit step."""

    path: Path
    model_type: str
    family: DecoderFamily
    # Config and tokenizer only (e.g. preset autoglm-phone-9b-shape): graphs can be checked, not built.
    shape_only: bool = False

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def load_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.path)

    def load(self):
        """The PyTorch model in eval mode, fp32, eager attention (the export reference)."""
        if self.shape_only:
            raise self.no_weights_error()
        import torch

        model = self.family.model_class.from_pretrained(
            self.path, dtype=torch.float32, attn_implementation="eager"
        )
        return model.eval()

    def no_weights_error(self) -> ModelDirError:
        return ModelDirError(
            f"{self.path} is a shape-only model directory: it has the configuration and tokenizer but no "
            "weights, so nothing can be exported, calibrated or built from it. Check its graphs at full "
            f"size with `autoglm-trt build --model {self.path} --backend tensorrt --check-only --out DIR`, "
            "or build from a directory that holds the real weights (*.safetensors)"
        )

    def side_files(self) -> list[Path]:
        """Top-level files other than weights: config, tokenizer, chat template, generation config."""
        return [p for p in self.path.iterdir() if p.is_file() and not p.name.endswith(NOT_SIDE_FILES)]

    def source_hash(self) -> str:
        """sha256 over every top-level file (config, weights, tokenizer), in name order."""
        digest = hashlib.sha256()
        for file in sorted(p for p in self.path.iterdir() if p.is_file()):
            digest.update(file.name.encode() + b"\0")
            update_digest(digest, file)
        return digest.hexdigest()


def open_model_dir(path: Path) -> ModelDir:
    hint = "create one with `autoglm-trt model create --preset smollm2-135m --out models/smollm2-135m`"
    if not path.exists():
        raise ModelDirError(f"model directory {path} does not exist; {hint}")
    if not path.is_dir():
        raise ModelDirError(f"{path} is a file, not a model directory; {hint}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"{path} has no config.json, so it is not a Hugging Face model directory; {hint}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelDirError(f"{config_file} is not readable JSON ({error}); re-save the model") from None
    shape_only = not any(p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir())
    if shape_only and not is_shape_only(path):
        raise ModelDirError(f"{path} has a config.json but no weights (*.safetensors); re-save the model")
    model_type = config.get("model_type", "")
    return ModelDir(path=path, model_type=model_type, family=family_for(model_type), shape_only=shape_only)
