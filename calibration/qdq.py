"""Q/DQ placement: which nodes run in int8, and the explicit-quantisation ONNX graph.

Quantised: MatMul, Gemm and Conv whose weight is an initializer, with int8 per-channel symmetric
weights and a per-tensor symmetric int8 activation scale (threshold / 127) from our calibration.
A Q/DQ pair sits on each quantised op's activation input and a DQ on its weight, the pattern
TensorRT fuses into an int8 kernel; nothing else changes, so norms, softmax, rotary maths, the
attention matmuls (activation × activation) and the embedding Gather stay in fp32. By default the
output projection (the matmul nearest the `logits` output: lm_head) stays fp32 too, and so, in
decoders, do the q/k/v and MLP down projections, whose inputs carry per-channel outliers (on
SmolLM2-135M quantising them multiplies held-out perplexity by 20; see README) unless smoothing
(`--smooth-alpha`, on for q/k/v by default, calibration/smoothing.py) flattened their inputs; `--int8-sensitive`
quantises them anyway, and `--exclude PATTERN` (a glob on node names) keeps more nodes out. ONNX Runtime's QDQ quantizer does
the rewrite, fed with our ranges.

`u8_activations` is the ONNX Runtime engine's view of the same graph: a symmetric int8
activation with scale s is exactly a uint8 one with zero point 128 and scale s (the same clamp,
shifted), and uint8 × int8 is what this CPU's VNNI kernels run fast.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calibration.entropy import INT8_MAX
from calibration.errors import CalibrationError
from runtime.onnx_files import needs_external_data

QUANTISABLE_OPS = ("MatMul", "Gemm", "Conv")
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1}
PER_CHANNEL_AXIS = {"MatMul": 1, "Conv": 0}
NEW_KV_OUTPUT = "new_kv"  # runtime/decoder_io.py NEW_KV: every decoder graph, stages included
LM_HEAD_OUTPUTS = ("logits",)  # runtime/decoder_io.py LOGITS  # Gemm's axis follows transB (ORT handles it)


@dataclass(frozen=True)
class Placement:
    """The quantisable nodes of a graph and which of them run in int8."""

    candidates: dict[str, str]  # node name -> its activation input tensor (calibrated)
    quantised: tuple[str, ...]  # node names, graph order
    excluded: dict[str, str]  # node name -> why it stays in higher precision

    @property
    def tensors(self) -> list[str]:
        """Activation tensors that get a Q/DQ pair (each once, graph order)."""
        return list(dict.fromkeys(self.candidates[name] for name in self.quantised))


def quantisable_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """{node name: activation input} for MatMul/Gemm/Conv nodes whose weight is an initializer."""
    weights = {init.name for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if (
            node.op_type in QUANTISABLE_OPS
            and node.input[WEIGHT_INPUT[node.op_type]] in weights
            and node.input[0] not in weights
        ):
            found[node.name] = node.input[0]
    return found


def output_projections(model: onnx.ModelProto, outputs: Iterable[str] = LM_HEAD_OUTPUTS) -> set[str]:
    """The first MatMul/Gemm/Conv met walking back from the named graph outputs (lm_head for logits)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: set[str] = set()
    for output in (o for o in model.graph.output if o.name in outputs):
        pending, seen = [output.name], set()
        while pending:
            node = producer.get(pending.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in QUANTISABLE_OPS:
                found.add(node.name)
                continue
            pending += list(node.input)
    return found


def sensitive_projections(model: onnx.ModelProto, candidates: dict[str, str]) -> dict[str, str]:
    """In a decoder (a graph with `logits`, or `new_kv`: a pipeline stage too): the attention input projections (three or more
    quantisable matmuls reading one tensor: q, k, v) and the gated-MLP down projections (reading
    silu(gate) · up, i.e. a Mul fed through a Sigmoid). Their inputs carry the per-channel
    outliers of Llama/GLM-style decoders, which one per-tensor int8 scale cannot resolve."""
    if not any(o.name in (*LM_HEAD_OUTPUTS, NEW_KV_OUTPUT) for o in model.graph.output):
        return {}
    producer = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[str]] = {}
    for name, tensor in candidates.items():
        readers.setdefault(tensor, []).append(name)
    found = {}
    for tensor, names in readers.items():
        if len(names) >= 3:
            found |= dict.fromkeys(
                names, "attention q/k/v projection (activation outliers) kept in higher precision"
            )
        elif _gated_product(tensor, producer):
            found |= dict.fromkeys(
                names, "MLP down projection (activation outliers) kept in higher precision"
            )
    return found


def _gated_product(tensor: str, producer: dict[str, onnx.NodeProto]) -> bool:
    node = producer.get(tensor)
    if node is None or node.op_type != "Mul":
        return False
    for operand in node.input:  # silu(gate) = gate · sigmoid(gate), one or two hops up
        first = producer.get(operand)
        if first is not None and first.op_type == "Sigmoid":
            return True
        if (
            first is not None
            and first.op_type == "Mul"
            and any(getattr(producer.get(x), "op_type", "") == "Sigmoid" for x in first.input)
        ):
            return True
    return False


def place(
    model: onnx.ModelProto,
    excludes: Iterable[str] = (),
    keep_output_projection: bool = True,
    keep_sensitive: bool = True,
    smoothed: Iterable[str] = (),
) -> Placement:
    """`smoothed`: sensitive projections whose outliers smoothing moved into the weights
    (calibration/smoothing.py); they are quantised even when `keep_sensitive` holds."""
    candidates = quantisable_nodes(model)
    if not candidates:
        raise CalibrationError(
            f"graph {model.graph.name or '(unnamed)'} has no MatMul, Gemm or Conv with a constant weight, "
            f"so there is nothing to run in int8; build it with --precision fp16 or fp32 instead"
        )
    excluded: dict[str, str] = {}
    if keep_output_projection:
        for name in sorted(output_projections(model) & candidates.keys()):
            excluded[name] = "output projection (lm_head) kept in higher precision"
    if keep_sensitive:
        smoothed = set(smoothed)
        for name, why in sensitive_projections(model, candidates).items():
            if name not in smoothed:
                excluded.setdefault(name, why)
    for pattern in excludes:
        matched = [name for name in candidates if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            examples = ", ".join(list(candidates)[:4])
            raise CalibrationError(
                f"--exclude {pattern!r} matches none of the {len(candidates)} quantisable nodes "
                f"(e.g. {examples}); give a glob on node names"
            )
        for name in matched:
            excluded.setdefault(name, f"--exclude {pattern}")
    quantised = tuple(name for name in candidates if name not in excluded)
    if not quantised:
        raise CalibrationError(
            f"every quantisable node is excluded ({len(excluded)}), so the int8 graph would equal fp32; "
            f"drop some --exclude patterns"
        )
    return Placement(candidates, quantised, excluded)


def qdq_from_fp32(fp32: Path, thresholds: dict[str, float], placement: Placement, out: Path) -> None:
    """Write the Q/DQ graph to `out` using ONNX Runtime's QDQ quantizer with our ranges."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    ranges = {
        tensor: TensorData(lowest=np.float32(-thresholds[tensor]), highest=np.float32(thresholds[tensor]))
        for tensor in placement.tensors
    }
    large = needs_external_data(onnx.load(str(fp32), load_external_data=False))
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".qdq.") as scratch, _quiet_ort_logging():
        cache = Path(scratch) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.Entropy, ranges), cache)
        quantize_static(
            str(fp32),
            str(out),
            calibration_data_reader=None,
            calibration_cache_path=str(cache),
            calibrate_method=CalibrationMethod.Entropy,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTISABLE_OPS),
            nodes_to_quantize=list(placement.quantised),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            use_external_data_format=large,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QDQOpTypePerChannelSupportToAxis": PER_CHANNEL_AXIS,
                # Only the quantised ops' inputs get Q/DQ; their outputs stay float.
                "OpTypesToExcludeOutputQuantization": list(QUANTISABLE_OPS),
                # Biases stay float: TensorRT's DequantizeLinear takes no int32 input, and it
                # fuses a float bias into the int8 kernel anyway.
                "QuantizeBias": False,
            },
        )
    _set_exact_scales(out, {t: thresholds[t] / INT8_MAX for t in placement.tensors})


@contextlib.contextmanager
def _quiet_ort_logging():
    """ORT's quantizer logs a pre-processing hint as a warning on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """{activation tensor: scale} of every QuantizeLinear in a graph."""
    inits = {init.name: init for init in model.graph.initializer}
    return {
        node.input[0]: float(numpy_helper.to_array(inits[node.input[1]]))
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits
    }


def _set_exact_scales(graph: Path, scales: dict[str, float]) -> None:
    """ORT computes 2t / 254 in float32, which can differ from t / 127 in the last bit; write the
    float32 of threshold / 127 itself, so the graph and the TensorRT cache carry the same bits."""
    model = onnx.load(str(graph), load_external_data=False)
    inits = {init.name: init for init in model.graph.initializer}
    quantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    done = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] not in done:
            tensor = node.input[0] if node.op_type == "QuantizeLinear" else quantized.get(node.input[0])
            if tensor in scales:
                value = np.array(scales[tensor], np.float32)
                inits[node.input[1]].CopyFrom(numpy_helper.from_array(value, node.input[1]))
                done.add(node.input[1])
    missing = set(scales) - set(quantized.values())
    if missing:
        raise AssertionError(f"the quantizer left {sorted(missing)} without a QuantizeLinear")
    onnx.save(model, str(graph))  # external weights, if any, stay where they are


def u8_activations(model: onnx.ModelProto) -> int:
    """Rewrite symmetric int8 activation Q/DQ (zero point 0) to uint8 with zero point 128, in place
    (bit-exact). Returns how many zero points changed; weights (initializer inputs) stay int8."""
    inits = {init.name: init for init in model.graph.initializer}
    changed: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.input[0] in inits:
            continue
        if len(node.input) < 3 or node.input[2] in changed or node.input[2] not in inits:
            continue
        zero_point = numpy_helper.to_array(inits[node.input[2]])
        if zero_point.dtype == np.int8 and zero_point.ndim == 0 and int(zero_point) == 0:
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(np.array(128, np.uint8), node.input[2]))
            changed.add(node.input[2])
    return len(changed)
