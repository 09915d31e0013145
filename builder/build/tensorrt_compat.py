"""The one place that knows how TensorRT 10.x and 11.x differ for our builds.

TensorRT 11: networks are always strongly typed (the STRONGLY_TYPED creation flag is deprecated and
ignored), precision comes only from the graph (Casts, Q/DQ), so an int8 build of a graph without
Q/DQ nodes is refused; BuilderFlag.FP16/INT8, IBuilderConfig.int8_calibrator and
set_calibration_profile are gone (docs: "Migrating from TensorRT 10.x to 11.x", Python API).
TensorRT 10.x (JetPack): weakly typed networks with builder precision flags; fp16 graphs get FP16,
int8 graphs get FP16 | INT8, and an int8 graph without Q/DQ nodes is calibrated implicitly from our
calibration cache through an IInt8EntropyCalibrator2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.build.tensorrt_calibration import make_entropy_calibrator, parse_calibration_cache
from builder.errors import BackendUnavailableError, BuildError

MIN_MAJOR = 10


@dataclass(frozen=True)
class PrecisionPlan:
    strongly_typed: bool
    flags: tuple[str, ...]  # BuilderFlag member names (TensorRT 10.x only)
    calibration_cache: Path | None
    description: str


def major_version(trt) -> int:
    return int(trt.__version__.split(".")[0])


def require_supported(trt) -> None:
    if major_version(trt) < MIN_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__} is too old: this builder uses the TensorRT 10/11 API "
            "(name-based I/O, execute_async_v3); install tensorrt>=10"
        )


def plan_precision(trt, precision: str, graph_has_qdq: bool, calibration_cache: Path | None) -> PrecisionPlan:
    if major_version(trt) >= 11:
        if precision == "int8" and not graph_has_qdq:
            # It would build, in the graph's float types, and be labelled int8.
            raise BuildError(
                f"TensorRT {trt.__version__} quantizes only from explicit QuantizeLinear/DequantizeLinear "
                "nodes (implicit INT8 calibration was removed in TensorRT 11), and this int8 graph has "
                "none. Recreate it with `autoglm-trt calibrate` (its <component>.int8.onnx carries Q/DQ; "
                "check that --exclude leaves some layers quantized), or build with TensorRT 10.x, which "
                "can quantize from the calibration cache"
            )
        return PrecisionPlan(True, (), None, "strongly typed: precision from the graph")
    if precision == "fp32":
        return PrecisionPlan(False, (), None, "TensorRT 10: fp32 (no precision flags)")
    if precision == "fp16":
        return PrecisionPlan(False, ("FP16",), None, "TensorRT 10: BuilderFlag.FP16 over the fp16 graph")
    if graph_has_qdq:
        return PrecisionPlan(False, ("FP16", "INT8"), None, "TensorRT 10: explicit Q/DQ, flags FP16 | INT8")
    if calibration_cache is None:
        raise BuildError(
            "an int8 build for TensorRT 10 needs Q/DQ nodes in the graph or a calibration cache "
            "('TRT-<version>-EntropyCalibration2') beside the engines; run `autoglm-trt calibrate` first"
        )
    return PrecisionPlan(
        False, ("FP16", "INT8"), calibration_cache,
        f"TensorRT 10: implicit INT8 from {calibration_cache.name} (IInt8EntropyCalibrator2), flags FP16 | INT8",
    )  # fmt: skip


def network_flags(trt, plan: PrecisionPlan) -> int:
    if plan.strongly_typed and major_version(trt) < 11:  # pragma: no cover - 11 ignores the flag
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def apply_precision(trt, config, plan: PrecisionPlan, calibration_profile=None) -> None:
    """Builder flags and, for implicit INT8, the calibrator. `calibration_profile`: the network's
    first optimization profile, which a dynamic-shape network needs for calibration (TensorRT 10;
    Polygraphy's CreateConfig sets it the same way). Call after the profiles are added."""
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.calibration_cache is not None:
        config.int8_calibrator = make_entropy_calibrator(trt, parse_calibration_cache(plan.calibration_cache))
        if calibration_profile is not None and not config.set_calibration_profile(calibration_profile):
            raise BuildError(
                "TensorRT refused the first optimization profile as the INT8 calibration profile "
                "(see the TensorRT log above)"
            )


def version_number(trt) -> int:
    """TensorRT's version as the integer calibration caches carry (10.3.0 -> 100300)."""
    parts = [int(p) for p in trt.__version__.split(".")[:3]] + [0, 0]
    return parts[0] * 10000 + parts[1] * 100 + parts[2]
