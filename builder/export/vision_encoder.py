"""The exportable GLM-4V vision encoder: fixed-size images in, LLM-space image embeddings out.

Input  `pixel_values` float32 [B, 3, H, W]  (B ≤ 8; H, W fixed per engine, preprocessed as the
       Hugging Face GLM-4V image processor does: rescaled, CLIP-normalised)
Output `embeddings`   float32 [B, T, hidden]  T = (H/p/m)·(W/p/m) image tokens per image, in the
       order Hugging Face's processor lays them out (merge blocks row-major)

The stock forward packs images into one sequence and splits attention with `cu_seqlens.tolist()`,
which fixes the batch at export time. This wrapper runs the model's own modules batched instead:
  - patch embedding as a Conv2d over the image: HF duplicates each image into `temporal_patch_size`
    identical frames before its Conv3d, which equals a Conv2d with the kernel summed over time;
  - tokens reordered into HF's merge-block order in-graph (a reshape and a transpose);
  - rotary angles and the bicubic-interpolated position embeddings depend only on the grid, which
    is fixed per engine, so they are computed once with the model's own modules and stored;
  - attention per image over [B, heads, N, d] with no mask (each image attends to itself only).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from transformers.models.glm4v.modeling_glm4v import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_position_ids

from builder.config import ExportConfig
from builder.errors import ExportError, ModelDirError
from builder.export.batched_encoder import batched_encoder_program, export_batched_encoder
from builder.export.validation import ValidationReport, compare
from builder.model_dir import ModelDir

INPUT, OUTPUT = "pixel_values", "embeddings"
# Largest engine side: the real GLM-4.1V allows ~2200² pixels, far more tokens than a phone
# screenshot needs at a fixed size; 896² gives 1024 tokens per image.
MAX_SIDE = 896
# fp32 ONNX Runtime vs eager PyTorch; the Conv2d-for-Conv3d rewrite changes summation order only.
ATOL, RTOL = 1e-4, 1e-4


@dataclass(frozen=True)
class VisionGeometry:
    """The engine's fixed image size and what it yields."""

    height: int
    width: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch_size, self.width // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        gh, gw = self.grid
        return gh * gw // self.merge_size**2


def engine_geometry(processor: dict, vision_config) -> VisionGeometry:
    """The largest square image the processor's own resize keeps as is (capped at MAX_SIDE).

    `processor` is preprocessor_config.json. The side is a multiple of patch·merge whose
    `temporal_patch_size·side²` fits the processor's `longest_edge` pixel budget, so an image of
    exactly this size passes through Hugging Face's `smart_resize` unchanged.
    """
    from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize

    patch, merge = processor["patch_size"], processor["merge_size"]
    temporal = processor["temporal_patch_size"]
    factor = patch * merge
    budget = processor["size"]["longest_edge"] // temporal
    side = min(MAX_SIDE, math.isqrt(budget)) // factor * factor
    size = processor["size"]
    kept = smart_resize(temporal, side, side, temporal, factor, size["shortest_edge"], size["longest_edge"])
    if side < factor or kept != (side, side):
        raise ExportError(
            f"no fixed image size fits the image processor's limits {size} (patch·merge {factor})"
        )
    if vision_config.patch_size != patch or vision_config.spatial_merge_size != merge:
        raise ExportError("preprocessor_config.json and the vision config disagree on patch/merge size")
    return VisionGeometry(side, side, patch, merge, temporal)


class BatchedVisionEncoder(nn.Module):
    """GLM-4V's vision tower over a batch of same-size images; see the module docstring."""

    def __init__(self, visual: nn.Module, geometry: VisionGeometry) -> None:
        super().__init__()
        self.visual = visual
        self.geometry = geometry
        conv = visual.patch_embed.proj  # Conv3d [D, C, T, p, p]
        self.register_buffer("patch_weight", conv.weight.detach().sum(dim=2), persistent=False)
        self.register_buffer(
            "patch_bias", conv.bias.detach() if conv.bias is not None else None, persistent=False
        )
        gh, gw = geometry.grid
        grid_thw = torch.tensor([[1, gh, gw]])
        position_ids = get_vision_position_ids(grid_thw, geometry.merge_size)  # [N, 2] merge-block order
        dim = visual.config.hidden_size
        with torch.no_grad():
            probe = torch.zeros(gh * gw, dim)
            cos, sin = visual.rotary_pos_emb(probe, position_ids)
            pos_embed = visual.embeddings(
                probe, torch.tensor([gh * gw]), grid_thw, position_ids[:, 0], position_ids[:, 1]
            )
        self.register_buffer("rope_cos", cos, persistent=False)  # [N, head_dim]
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("pos_embed", pos_embed, persistent=False)  # [N, D]

    def _patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.geometry.merge_size
        x = nn.functional.conv2d(
            pixel_values, self.patch_weight, self.patch_bias, stride=self.geometry.patch_size
        )
        batch, dim, gh, gw = x.shape
        # [B, D, gh, gw] → merge-block order [B, gh/m, gw/m, m, m, D] → [B, N, D]
        x = x.view(batch, dim, gh // m, m, gw // m, m).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(batch, gh * gw, dim)

    def _attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        qkv = attn.qkv(x).view(batch, seq, 3, attn.num_heads, attn.head_dim)
        q, k, v = qkv.unbind(2)  # [B, N, heads, d]
        q, k = apply_rotary_pos_emb_vision(q, k, self.rope_cos, self.rope_sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, N, d]
        scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, -1)
        return attn.proj(out)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        visual, m = self.visual, self.geometry.merge_size
        x = visual.post_conv_layernorm(self._patches(pixel_values)) + self.pos_embed
        for block in visual.blocks:
            x = x + self._attention(block.attn, block.norm1(x))
            x = x + block.mlp(block.norm2(x))
        x = visual.post_layernorm(x)
        batch, seq, dim = x.shape
        # Each merge block's m·m tokens are consecutive: [B·N/m², m, m, D] → Conv2d(k=m, s=m)
        x = x.reshape(batch * seq // m**2, m, m, dim).permute(0, 3, 1, 2)
        x = visual.downsample(x).view(batch, seq // m**2, -1)
        return visual.merger(x)


def hf_patches(pixel_values: np.ndarray, geometry: VisionGeometry) -> tuple[np.ndarray, np.ndarray]:
    """[B, 3, H, W] → Hugging Face's (flattened patches [B·N, C·T·p·p], image_grid_thw [B, 3]),
    laid out exactly as `Glm4vImageProcessor` lays out its output for these pixels."""
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    processor = Glm4vImageProcessorPil()
    args = (geometry.patch_size, geometry.merge_size, geometry.temporal_patch_size)
    flat = [processor.patchify(image, *args) for image in pixel_values]
    patches = np.concatenate([np.ascontiguousarray(p) for p, _, _ in flat])
    grid = np.array([[1, gh, gw] for _, gh, gw in flat], np.int64)
    return patches, grid


def export_vision_encoder(encoder: BatchedVisionEncoder, cfg: ExportConfig, out: Path) -> None:
    export_batched_encoder(encoder, _example(encoder), (INPUT, OUTPUT), cfg, out, "vision encoder")


def vision_encoder_program(encoder: BatchedVisionEncoder, cfg: ExportConfig) -> torch.onnx.ONNXProgram:
    """The graph in memory, nothing written (the shape-only check writes its own stand-in weights)."""
    return batched_encoder_program(encoder, _example(encoder), (INPUT, OUTPUT), cfg, "vision encoder")


def _example(encoder: BatchedVisionEncoder) -> torch.Tensor:
    g = encoder.geometry
    return torch.randn(2, 3, g.height, g.width)


def validate_vision_encoder(
    encoder: BatchedVisionEncoder, model: nn.Module, graph: Path, cfg: ExportConfig
) -> ValidationReport:
    """ONNX Runtime vs the batched wrapper vs Hugging Face's `get_image_features` (batch 1 and 8)."""
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    g = encoder.geometry
    checks = []
    for batch in (1, cfg.max_batch):
        pixels = (
            np.random.default_rng(batch).standard_normal((batch, 3, g.height, g.width)).astype(np.float32)
        )
        patches, grid = hf_patches(pixels, g)
        with torch.no_grad():
            ours = encoder(torch.from_numpy(pixels)).numpy()
            features = model.model.get_image_features(torch.from_numpy(patches), torch.from_numpy(grid))
            hf = torch.stack(features.pooler_output).numpy()
        (onnx_out,) = session.run([OUTPUT], {INPUT: pixels})
        checks.append(compare(f"b{batch} {g.height}x{g.width}", OUTPUT, ours, onnx_out, ATOL, RTOL))
        checks.append(compare(f"b{batch} wrapper vs HF", OUTPUT, hf, ours, ATOL, RTOL))
    return ValidationReport(
        graph=graph.name,
        reference="PyTorch eager (batched wrapper; HF get_image_features)",
        checks=tuple(checks),
    )


def _processor_config(model_dir: ModelDir) -> dict:
    path = model_dir.path / "preprocessor_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelDirError(
            f"{path} is missing or unreadable ({error}); a GLM-4V model directory needs its image "
            f"processor config to build the vision encoder"
        ) from None


def manifest_info(model_dir: ModelDir) -> dict:
    """The manifest's `encoders.vision_encoder` block (what runtime/multimodal needs)."""
    config = model_dir.load_config()
    processor = _processor_config(model_dir)
    g = engine_geometry(processor, config.vision_config)
    return {
        "input": INPUT,
        "output": OUTPUT,
        "input_shape": [3, g.height, g.width],
        "tokens_per_item": g.tokens_per_image,
        "hidden_size": config.vision_config.out_hidden_size,
        "merge_size": g.merge_size,
        "resize_policy": "letterbox",
        "token_ids": {
            "placeholder": config.image_token_id,
            "start": config.image_start_token_id,
            "end": config.image_end_token_id,
        },
        "preprocessor": processor,
    }


def batched_vision_encoder(model: nn.Module, model_dir: ModelDir) -> BatchedVisionEncoder:
    """The exportable wrapper around `model`'s vision tower, at the engine's fixed image size."""
    g = engine_geometry(_processor_config(model_dir), model.config.vision_config)
    return BatchedVisionEncoder(model.model.visual, g).eval()


def export_component(model: nn.Module, model_dir: ModelDir, cfg: ExportConfig, out: Path) -> ValidationReport:
    from runtime.progress import stage

    encoder = batched_vision_encoder(model, model_dir)
    g = encoder.geometry
    with stage(f"export vision_encoder → ONNX (batch 1–{cfg.max_batch}, {g.height}×{g.width})"):
        export_vision_encoder(encoder, cfg, out)
    with stage("validate vision_encoder: ONNX Runtime vs PyTorch vs Hugging Face (batch 1 and 8)"):
        return validate_vision_encoder(encoder, model, out, cfg)


def calibration(model_dir: ModelDir, cfg):
    """INT8 calibration feeds: images (scikit-image's sample photographs, or `--data DIR`),
    letterboxed and normalised by the runtime's own preprocessing, one image per engine call."""
    from PIL import Image

    from calibration.feeds import CalibrationSet, digest_of
    from calibration.readers import IMAGE_SUFFIXES, default_image_dir, image_samples
    from runtime.multimodal.image import ImagePreprocessor, ImageSpec

    info = manifest_info(model_dir)
    preprocess = ImagePreprocessor(ImageSpec.from_info(info))
    count = cfg.samples
    if cfg.data is None:  # scikit-image ships fewer photographs than the default sample count
        shipped = [p for p in default_image_dir().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        count = min(count, len(shipped))
    samples = image_samples(cfg.data, count)
    pixels = [preprocess.pixel_values(Image.fromarray(rgb))[None] for rgb in samples]

    def feeds(inputs):
        for batch in pixels:
            yield {INPUT: batch}

    return CalibrationSet(samples.description, len(pixels), digest_of(p.tobytes() for p in pixels), feeds)
