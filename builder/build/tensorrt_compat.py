"""The one place that knows how TensorRT 10.x and 11.x differ for our builds.

Precision lives in the graph (the fp16 rewrite keeps RMSNorm's x², rotary angles and Softmax in
fp32; int8 and int4 are Q/DQ nodes), so networks are built strongly typed: TensorRT then runs each
tensor in the type the graph gives it. A weakly typed network with BuilderFlag.FP16 would be free
to run those fp32 islands in fp16 (the graph's types are only hints there).

TensorRT 11: networks are always strongly typed (the STRONGLY_TYPED creation flag is deprecated and
ignored, so it is not passed); BuilderFlag.FP16/INT8, IBuilderConfig.int8_calibrator and
set_calibration_profile are gone (docs: "Migrating from TensorRT 10.x to 11.x"), so an int8 graph
without Q/DQ nodes is refused.
TensorRT 10.x (JetPack): NetworkDefinitionCreationFlag.STRONGLY_TYPED (there since 10.0) for fp32,
fp16, Q/DQ int8 and int4 graphs; strongly typed networks take no precision flags. The one weakly
typed build is an int8 graph without Q/DQ nodes, quantized implicitly from our calibration cache
through an IInt8EntropyCalibrator2 (flags FP16 | INT8).
Both: BuilderFlag.TF32 is on by default and lets fp32 matmuls round their inputs to 10-bit
mantissas; fp32 builds clear it, so an fp32 plan is the fp32 reference it claims to be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.build.tensorrt_calibration import make_entropy_calibrator, parse_calibration_cache
from builder.errors import BackendUnavailableError, BuildError
from calibration import trt_cache

MIN_MAJOR = 10


@dataclass(frozen=True)
class PrecisionPlan:
    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag member names to set (TensorRT 10.x implicit INT8 only)
    calibration_cache: Path | None
    description: str
    cleared: tuple[str, ...] = ()  # BuilderFlag member names to clear (TF32 for fp32)


def major_version(trt) -> int:
    return int(trt.__version__.split(".")[0])


def require_supported(trt) -> None:
    if major_version(trt) < MIN_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} is too old: this builder uses the TensorRT 10/11 API "
            "(name-based I/O, execute_async_v3, strongly typed networks); install tensorrt>=10"
        )


def plan_precision(trt, precision: str, graph_has_qdq: bool, calibration_cache: Path | None) -> PrecisionPlan:
    if precision == "int8" and not graph_has_qdq:
        return _implicit_int8(trt, calibration_cache)
    if precision == "fp32":
        return PrecisionPlan(True, (), None, "strongly typed fp32, TF32 off", cleared=("TF32",))
    return PrecisionPlan(True, (), None, f"strongly typed {precision}: precision from the graph")


def _implicit_int8(trt, calibration_cache: Path | None) -> PrecisionPlan:
    if major_version(trt) >= 11:
        # It would build, in the graph's float types, and be labelled int8.
        raise BuildError(
            f"TensorRT {trt.__version__} quantizes only from explicit QuantizeLinear/DequantizeLinear "
            "nodes (implicit INT8 calibration was removed in TensorRT 11), and this int8 graph has "
            "none. Recreate it with `autoglm-trt calibrate` (its <component>.int8.onnx carries Q/DQ; "
            "check that --exclude leaves some layers quantized), or build with TensorRT 10.x, which "
            "can quantize from the calibration cache"
        )
    if calibration_cache is None:
        raise BuildError(
            "an int8 build for TensorRT 10 needs Q/DQ nodes in the graph or a calibration cache "
            "('TRT-<version>-EntropyCalibration2') beside the engines; run `autoglm-trt calibrate` first"
        )
    return PrecisionPlan(
        False, ("FP16", "INT8"), calibration_cache,
        f"TensorRT 10, weakly typed: implicit INT8 from {calibration_cache.name} (IInt8EntropyCalibrator2), "
        "flags FP16 | INT8",
    )  # fmt: skip


def network_flags(trt, plan: PrecisionPlan) -> int:
    """create_network flags: STRONGLY_TYPED on 10.x; nothing on 11 (always strongly typed)."""
    if plan.strongly_typed and major_version(trt) < 11:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def apply_precision(trt, config, plan: PrecisionPlan, calibration_profile=None) -> None:
    """Builder flags and, for implicit INT8, the calibrator. `calibration_profile`: the network's
    first optimization profile, which a dynamic-shape network needs for calibration (TensorRT 10;
    Polygraphy's CreateConfig sets it the same way). Call after the profiles are added."""
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.cleared:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    if plan.calibration_cache is not None:
        cache = parse_calibration_cache(plan.calibration_cache)
        config.int8_calibrator = make_entropy_calibrator(trt, cache, version_number(trt))
        if calibration_profile is not None and not config.set_calibration_profile(calibration_profile):
            raise BuildError(
                "TensorRT refused the first optimization profile as the INT8 calibration profile "
                "(see the TensorRT log above)"
            )


def version_number(trt) -> int:
    """TensorRT's version as the integer calibration caches carry (10.3.0 -> 100300)."""
    return trt_cache.version_number(trt.__version__)
