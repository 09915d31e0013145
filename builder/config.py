"""Frozen configuration per stage, built once at the CLI boundary."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field


class Precision(enum.StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"


class Backend(enum.StrEnum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


@dataclass(frozen=True)
class ExportConfig:
    """Shape limits baked into the exported graph's dynamic axes (and the engine profiles)."""

    max_batch: int = 8
    max_seq_len: int = 2048  # prompt + completion, capped by the model's max_position_embeddings
    block_size: int = 16  # tokens per KV block
    opset: int = 20

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.max_seq_len // self.block_size)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BuildConfig:
    export: ExportConfig = field(default_factory=ExportConfig)
    precisions: tuple[Precision, ...] = (Precision.fp32, Precision.fp16)
    backend: Backend = Backend.auto
