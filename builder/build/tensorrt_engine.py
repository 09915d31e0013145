"""The TensorRT backend's build step: precision-annotated ONNX -> serialized plan.

Parsed with TensorRT's ONNX parser from the pre-optimizer graph (ONNX Runtime's optimized graph
holds com.microsoft ops TensorRT cannot import; `--check-only` proves it on the CPU), by path, so
weights stored beside a graph over 2 GB (ONNX external data) resolve. int8 and int4 decoders are
quantized from the fp32 graph, KV I/O included: their plans get the fp16 engine's fp16 KV pool
through a copy of the graph with Casts at the KV inputs and output (fp16_kv_onnx_from_graph).
Per build: optimization profiles from the graph's dynamic axes (tensorrt_profiles.py), a timing
cache shared by every build in the engines dir, the builder optimization level and workspace limit
from TensorRTConfig, precision per TensorRT version (tensorrt_compat.py), and the engine
inspector's layer report saved as `<plan>.layers.json` and summarised. The plan and every file
beside it are written to a temporary name and renamed. TensorRT is imported lazily: it is absent
on CPU-only machines.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import onnx

from builder.build.tensorrt_calibration import find_calibration_cache
from builder.build.tensorrt_fp16_kv import FP16_KV_PRECISIONS, fp16_kv_onnx_from_graph
from builder.build.tensorrt_layers import fusion_summary
from builder.build.tensorrt_profiles import Profile, ProfileError, graph_inputs, profiles_for
from builder.config import TensorRTConfig
from builder.errors import BackendUnavailableError, BuildError
from runtime import decoder_io as io
from runtime.manifest import Manifest
from runtime.progress import note

TIMING_CACHE = "tensorrt.timing.cache"


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def require_tensorrt() -> None:
    if not tensorrt_available():
        raise BackendUnavailableError(
            "TensorRT is not installed: install it on a machine with an NVIDIA GPU "
            "(pip install 'autoglm-trt[tensorrt]'), or build with --backend onnxruntime; "
            "`--backend tensorrt --check-only` checks the graphs without it"
        )


def trt_step_options(
    component: str, precision: str, manifest: Manifest, config: TensorRTConfig, engines_dir: Path
) -> dict:
    """What the pipeline passes to `trt_engine_from_onnx` beyond (graph, engine)."""
    return {
        "component": component,
        "precision": precision,
        "axes": dict(manifest.axes),
        "config": config,
        "engines_dir": engines_dir,
    }


class _Logger:
    """TensorRT's logger, created lazily (trt.Logger needs the import)."""

    @staticmethod
    def make(trt):
        return trt.Logger(trt.Logger.WARNING)


def _parse(trt, builder, graph: Path, flags: int):
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, builder.logger)
    if not parser.parse_from_file(str(graph)):  # from a path: external weight files resolve beside it
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(
            f"TensorRT's ONNX parser rejected {graph.name}: {'; '.join(errors[:5])}. Run "
            "`autoglm-trt build --backend tensorrt --check-only` to see every incompatibility"
        )
    return network, parser


def add_profiles(builder, config, profiles: list[Profile]) -> list:
    """Add `profiles` to `config` in order (the runtime selects them by index: 0 prefill, 1 decode);
    return the TensorRT profile objects."""
    added = []
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, shape in profile.shapes.items():
            try:
                trt_profile.set_shape(name, shape.min, shape.opt, shape.max)
            except RuntimeError as error:  # the binding raises where setDimensions returns false
                raise ProfileError(
                    f"TensorRT refused the {profile.name} profile's range for input '{name}' (min "
                    f"{shape.min}, opt {shape.opt}, max {shape.max}): {error}. Check the manifest's axes"
                ) from None
        index = config.add_optimization_profile(trt_profile)
        if index != len(added):
            raise ProfileError(
                f"TensorRT refused the {profile.name} optimization profile: add_optimization_profile "
                f"returned {index} (-1: invalid), expected {len(added)}; see the TensorRT log above"
            )
        added.append(trt_profile)
    return added


def load_timing_cache(config, path: Path):
    """The shared timing cache and how many of its bytes this build reuses. ignore_mismatch=False:
    TensorRT refuses a cache from another GPU or TensorRT version (set_timing_cache returns
    False); then a fresh cache is started, and saving it after the build replaces the old file."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache, len(data)
    if data:
        note(f"timing cache {path.name} was refused (another GPU or TensorRT version): starting a fresh one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BuildError("TensorRT refused an empty timing cache (see the TensorRT log above)")
    return cache, 0


def _save_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def layer_report(trt, plan: bytes, logger, name: str) -> dict:
    """The engine inspector's JSON for `plan`; deserializing it also proves the plan loads."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise BuildError(
            f"TensorRT built {name} but cannot deserialize the plan (see the TensorRT log above); "
            "nothing was written. Check free GPU memory and that this TensorRT matches its libraries"
        )
    inspector = engine.create_engine_inspector()
    if inspector is None:
        raise BuildError(f"TensorRT could not create an engine inspector for {name} (see its log above)")
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def trt_engine_from_onnx(
    graph: Path,
    engine: Path,
    *,
    component: str,
    precision: str,
    axes: dict,
    config: TensorRTConfig,
    engines_dir: Path,
) -> dict:
    """Build `graph` into a serialized plan at `engine`; return the build report for the manifest."""
    require_tensorrt()
    import tensorrt as trt

    from builder.build import tensorrt_compat as compat

    compat.require_supported(trt)
    inputs = graph_inputs(graph)
    is_decoder = io.BLOCK_TABLES in inputs  # the text decoder or one of its pipeline stages
    profiles = profiles_for(inputs, axes, decoder=is_decoder)
    has_qdq = _has_qdq(graph)
    cache_file = find_calibration_cache(component, engines_dir, graph.parent) if precision == "int8" else None
    plan_precision = compat.plan_precision(trt, precision, has_qdq, cache_file)
    parsed = fp16_kv_onnx_from_graph(graph) if is_decoder and precision in FP16_KV_PRECISIONS else graph

    logger = _Logger.make(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, parsed, compat.network_flags(trt, plan_precision))
    build_config = builder.create_builder_config()
    build_config.builder_optimization_level = config.optimization_level
    if config.workspace_gib is not None:
        build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * 2**30))
    build_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names + fused ONNX nodes
    trt_profiles = add_profiles(builder, build_config, profiles)
    compat.apply_precision(trt, build_config, plan_precision, calibration_profile=trt_profiles[0])
    timing_path = engines_dir / TIMING_CACHE
    timing_cache, reused_bytes = load_timing_cache(build_config, timing_path)

    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build {graph.name} (see the TensorRT log above)")
    plan = bytes(serialized)
    layers = layer_report(trt, plan, logger, graph.name)
    _save_atomic(engine, plan)
    _save_atomic(timing_path, bytes(timing_cache.serialize()))
    layers_path = engines_dir / f"{component}.{precision}.plan.layers.json"
    _save_atomic(layers_path, (json.dumps(layers, indent=1) + "\n").encode())
    summary = fusion_summary(layers)
    note(f"TensorRT {trt.__version__}: {plan_precision.description}")
    note(f"{summary['layers']} engine layers from {summary['onnx_nodes']} ONNX nodes; "
         f"{summary['fused_layers']} fused layers (full report: {layers_path.name})")  # fmt: skip
    for line in summary["examples"]:
        note(f"  {line}")
    return {
        "builder": f"tensorrt {trt.__version__}",
        "onnx": parsed.name,  # the graph TensorRT parsed: the plan's I/O names and types
        "precision_mode": plan_precision.description,
        "optimization_level": config.optimization_level,
        "workspace_gib": config.workspace_gib,
        "profiles": {p.name: {k: vars(v) for k, v in p.shapes.items()} for p in profiles},
        "timing_cache": {"file": TIMING_CACHE, "reused_bytes": reused_bytes},
        "calibration_cache": cache_file.name if cache_file else None,
        "layers_report": layers_path.name,
        "fusion": {k: summary[k] for k in ("layers", "onnx_nodes", "fused_layers")},
    }


def _has_qdq(graph: Path) -> bool:
    model = onnx.load(str(graph), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
