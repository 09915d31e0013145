"""The int4 (W4A16) build step: fp32 ONNX → [AWQ-scaled fp32] → block-wise int4 weight-only ONNX.

Every MatMul/Gemm with a constant weight reads it through
`DequantizeLinear(Wq int4 [K, N], scale float32 [ceil(K/bs), N], axis=0, block_size=bs)`
(calibration/weight_only.py; the tied embedding is stored once, blocks along H); activations,
norms, attention and the rest stay float32. `--int4-method gptq` (default) and `awq` first
fold activation-aware scales into the decoder's norm and up-projection weights (calibration/awq.py,
sites from calibration/smoothing.py); then `gptq` rounds every weight against samples of its input
(calibration/gptq.py) and `awq` to nearest; `rtn` rounds the weights as they are.

The graph's default-domain opset becomes 21: int4 and DequantizeLinear's block_size need it. The
other ops the exported graphs use are unchanged from 20 to 21 but for new int4/uint4 (and float8)
type constraints (Cast, CastLike, Constant, ConstantOfShape, Flatten, Identity, If, Loop, Pad,
QuantizeLinear, Reshape, Scan, Shape, Size, Squeeze, Transpose, Unsqueeze); GroupNormalization is
the one op whose meaning changed in 21 (per-channel scale and bias), so a graph using it is
refused rather than silently reinterpreted (`raise_on_changed_ops`).

Skipped when `<name>.int4.json` records the same fp32 graph, data (AWQ only), method, block size
and INT4_VERSION; written under a temporary name and renamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from builder.config import CalibrationConfig, Int4Method
from calibration.errors import CalibrationError
from calibration.feeds import CalibrationSet
from calibration.smoothing import DOWN, GATE_UP, QKV, smoothing_plan
from calibration.weight_only import INT8, Scheme, weight_inputs, weight_only
from runtime.build_records import StepRecord
from runtime.onnx_files import save_graph
from runtime.progress import note, stage

INT4_VERSION = 6  # bump when the quantiser, the AWQ search or the graph pattern changes
OPSET = 21
CHANGED_IN_21 = frozenset({"GroupNormalization"})
AWQ_KINDS = (QKV, GATE_UP, DOWN)
AWQ_METHOD = "AWQ: s = mean|X|^α per input channel, α per site from 0…1 minimising the output error; then RTN"
GPTQ_METHOD = "GPTQ on AWQ's scales: each input channel's rounding error moved onto the channels after it"
RTN_METHOD = "RTN: round to nearest, symmetric int4 per block"


@dataclass(frozen=True)
class Int4Graph:
    graph: Path
    summary: dict  # for the manifest entry's `calibration`


def raise_on_changed_ops(model: onnx.ModelProto) -> None:
    changed = sorted({n.op_type for n in model.graph.node if not n.domain and n.op_type in CHANGED_IN_21})
    if changed:
        raise CalibrationError(
            f"the graph uses {', '.join(changed)}, whose meaning changed in opset 21, which int4 needs; "
            f"build it at int8, fp16 or fp32"
        )


def set_opset(model: onnx.ModelProto, version: int = OPSET) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, version)
            return
    model.opset_import.append(onnx.helper.make_opsetid("", version))


def int4_model(
    fp32: Path, scheme: Scheme, method: Int4Method, data: CalibrationSet | None, table_bits: int = 4
) -> tuple[onnx.ModelProto, dict]:
    """The int4 graph in memory (weights included) and its summary."""
    model = onnx.load(str(fp32))
    raise_on_changed_ops(model)
    summary: dict = {"method": RTN_METHOD, "block_size": scheme.block_size}
    inputs = None
    if method.calibrated and data is None:
        note(f"{fp32.name}: no calibration data; int4 by RTN")
    elif method.calibrated:
        from calibration.awq import apply_awq, collect_site_stats

        plan = smoothing_plan(model, AWQ_KINDS)
        gptq = method is Int4Method.gptq
        tensors = list(dict.fromkeys(plan.tensors + (weight_inputs(model) if gptq else [])))
        with stage(f"int4 statistics: {len(tensors)} weight inputs over {data.description}"):
            stats = collect_site_stats(fp32, tensors, data)
        scales: dict = {}
        if plan.targets:
            with stage(f"AWQ search: α per site at block size {scheme.block_size}"):
                sites, scales = apply_awq(model, plan, stats, scheme)
        else:
            sites = {}
            note(f"{fp32.name}: no AWQ site; {'GPTQ rounding only' if gptq else 'int4 by RTN'}")
        if gptq:  # an AWQ site's input now carries X / s
            inputs = {t: stats[t].rows_seen / scales.get(t, 1.0) for t in tensors}
        if sites or gptq:
            summary |= {
                "method": GPTQ_METHOD if gptq else AWQ_METHOD,
                "samples": data.samples,
                "data": data.description,
                "data_sha256": data.digest,
                "sites": sites,
                "not_scaled": plan.unmatched,
            }
    with stage(f"int4 weights ({'GPTQ' if inputs else 'RTN'} rounding, blocks of {scheme.block_size})"):
        report = weight_only(model, scheme, table_scheme=scheme if table_bits == 4 else INT8, inputs=inputs)
    set_opset(model)
    summary |= {
        "weights": f"int4 symmetric, blocks of {scheme.block_size} along the contracted axis, float32 scales",
        "activations": "float (W4A16)",
        "tied_table_bits": table_bits if report.tied_embedding else None,
    } | report.as_dict()
    return model, summary


def int4_onnx_from_fp32(
    name: str, fp32: Path, fp32_hash: str, cfg: CalibrationConfig, work: Path, data: CalibrationSet | None
) -> Int4Graph:
    method = cfg.int4_method if data is not None else Int4Method.rtn
    graph = work / f"{name}.int4.onnx"
    wanted = {
        "fp32_sha256": fp32_hash,
        "int4_version": INT4_VERSION,
        "method": method.value,
        "block_size": cfg.int4_block_size,
        "table_bits": cfg.int4_table_bits,
        "data_sha256": data.digest if method.calibrated else None,
    }
    step = StepRecord(work / f"{name}.int4.json", wanted)
    if (previous := step.current(graph)) is not None:
        note(f"{name} int4 ONNX up to date: {graph}")
        return Int4Graph(graph, previous["summary"])
    if cfg.int4_table_bits not in (4, 8):
        raise CalibrationError(f"--int4-table-bits {cfg.int4_table_bits} is not supported; use 4 or 8")
    model, summary = int4_model(fp32, Scheme(4, cfg.int4_block_size), method, data, cfg.int4_table_bits)
    short = {AWQ_METHOD: "awq", GPTQ_METHOD: "gptq"}.get(summary["method"], "rtn")
    with step.redo() as record:
        with stage(f"write {name} int4 ONNX ({summary['weight_only_nodes']} weights int4, {short})"):
            save_graph(model, graph)
        record["summary"] = summary
    return Int4Graph(graph, summary)
