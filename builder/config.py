"""Frozen configuration per stage, built once at the CLI boundary."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from pathlib import Path


class Precision(enum.StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    int4 = "int4"  # W4A16: block-wise int4 weights (builder/quantize/int4_step.py)


class Int4Method(enum.StrEnum):
    gptq = "gptq"  # AWQ's scales, then GPTQ's error-compensating rounding (calibration/gptq.py)
    awq = "awq"  # activation-aware per-channel scales folded into the producer, then RTN (calibration/awq.py)
    rtn = "rtn"  # round to nearest per block, no calibration data

    @property
    def calibrated(self) -> bool:
        return self is not Int4Method.rtn


INT4_BLOCK_SIZES = (32, 64, 128)


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
class TensorRTConfig:
    """TensorRT builder options (builder/build/tensorrt_engine.py)."""

    optimization_level: int = 3  # IBuilderConfig.builder_optimization_level, 0–5 (TensorRT's default: 3)
    workspace_gib: float | None = None  # MemoryPoolType.WORKSPACE limit; None: TensorRT's default (all)
    check_only: bool = False  # run export + precision passes and the CPU compatibility check only


@dataclass(frozen=True)
class CalibrationConfig:
    """INT8 calibration (calibration/): which samples, and which quantisable nodes stay float."""

    data: Path | None = None  # a directory of the user's files; None: the built-in default data
    samples: int = 64
    excludes: tuple[str, ...] = ()  # globs on node names kept out of int8 (lm_head always is)
    int8_sensitive: bool = False  # also quantise decoders' q/k/v and MLP down projections
    # SmoothQuant α for decoders' q/k/v projections (calibration/smoothing.py), which then run in
    # int8; 0: off. 0.8 measured best on SmolLM2-135M (README, INT8).
    smooth_alpha: float = 0.8
    # int4 (W4A16): weights in blocks of `int4_block_size` along the contracted axis, symmetric
    int4_block_size: int = 32
    int4_method: Int4Method = Int4Method.gptq
    # bits of a tied embedding table (embedding and lm_head) in the int4 graph: 4 (blocks along H)
    # or 8 (per vocab row, as llama.cpp keeps its output tensor at higher bits); on SmolLM2 8 costs
    # +11.6 MiB and halves int4's perplexity loss (README, INT4)
    int4_table_bits: int = 8


@dataclass(frozen=True)
class BuildConfig:
    export: ExportConfig = field(default_factory=ExportConfig)
    precisions: tuple[Precision, ...] = (Precision.fp32, Precision.fp16)
    backend: Backend = Backend.auto
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # The text decoder as N graphs over contiguous layer ranges, one per device (runtime/stages.py).
    pipeline_stages: int = 1
