"""SmoothQuant-style smoothing (Xiao et al. 2022): move activation outliers into the weights, as an
exact rewrite of the fp32 graph before calibration.

For a projection Y = X · W (ONNX MatMul, W: [in, out]) whose input X has per-channel outliers,
    s_j = max|X_j|^α / max_k |W_jk|^(1 − α)        (one s per input channel j)
and X' = X / s, W' = diag(s) · W give X' · W' = X · W, with X' much flatter per channel. The 1/s
is folded into whatever produces X, so no node is added:

- attention q/k/v (three or more projections reading one tensor): the RMSNorm's final
  `Mul(weight, normed)` — its weight initializer is divided by s; the max over W's row j runs
  over all the consumers' weights, and each consumer's row j is multiplied by s;
- MLP down projection (reading silu(gate) · up): the up projection's weight columns are divided
  by s (scaling up's output scales the product), and down's rows are multiplied by s;
- MLP gate/up projections (one or two projections reading the post-attention RMSNorm; GLM's fused
  gate_up is one; in an encoder, a fused qkv behind its norm matches too): folded into that norm's
  weight like q/k/v. Not a SmoothQuant site (int8 keeps
  these projections W8A8 unsmoothed); AWQ (calibration/awq.py) scales it.

The fold (`fold_scales`) is shared: SmoothQuant computes s from channel maxima (`smooth`), AWQ
searches it per site; both apply it the same way.

A projection is smoothed only when the pattern holds exactly in the graph (the producer's output
feeds only those projections, the weights are initializers used once, the shapes agree); any
other is left as it is and reported with the reason, and the Q/DQ step keeps it in float.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from calibration.qdq import output_projections, quantisable_nodes, sensitive_projections
from runtime.onnx_files import save_graph

MIN_SCALE, MAX_SCALE = 1e-3, 1e3  # s outside this range means a degenerate channel, not an outlier
QKV, DOWN = "attention q/k/v", "MLP down projection"
GATE_UP = "norm-fed projection (MLP gate/up)"  # also a fused qkv behind a norm (GLM's vision encoder)
NORM_FOLDED = (QKV, GATE_UP)  # kinds whose 1/s goes into a norm weight (the rest: up's columns)


@dataclass(frozen=True)
class SmoothTarget:
    """One smoothing site: consumers' input tensor, the consumers, and where 1/s is folded."""

    kind: str  # QKV, DOWN or GATE_UP
    activation: str  # the consumers' shared input tensor; its per-channel max is calibrated
    consumers: tuple[str, ...]  # MatMul node names; their weights' row j takes s_j
    producer: str  # RMSNorm weight Mul (q/k/v, gate/up) or up-projection MatMul (down)
    fold: str  # initializer that takes 1/s: the norm weight (last axis) or up's weight (axis 1)


@dataclass(frozen=True)
class SmoothPlan:
    targets: tuple[SmoothTarget, ...]
    unmatched: dict[str, str]  # sensitive node -> why it is not smoothed (it stays float)

    @property
    def tensors(self) -> list[str]:
        return [t.activation for t in self.targets]

    @property
    def smoothed(self) -> tuple[str, ...]:
        return tuple(name for t in self.targets for name in t.consumers)


def smoothing_plan(model: onnx.ModelProto, kinds: tuple[str, ...] = (QKV, DOWN)) -> SmoothPlan:
    """Find the smoothing sites of `kinds`: q/k/v and down among the decoder's sensitive projections
    (qdq.sensitive_projections), gate/up among the other projections reading a norm's weight Mul
    (never the output projection); sites of other kinds are left as they are."""
    g = model.graph
    candidates = quantisable_nodes(model)
    sensitive = sensitive_projections(model, candidates)
    nodes = {n.name: n for n in g.node}
    producer = {out: n for n in g.node for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    inits = {i.name: i for i in g.initializer}
    outputs = {o.name for o in g.output}
    groups: dict[str, list[str]] = {}
    for name in sensitive:
        groups.setdefault(candidates[name], []).append(name)
    if GATE_UP in kinds:
        lm_head = output_projections(model)
        others: dict[str, list[str]] = {}
        for name, tensor in candidates.items():
            if name not in sensitive and name not in lm_head and tensor not in groups:
                others.setdefault(tensor, []).append(name)
        for tensor, names in others.items():
            source = producer.get(tensor)
            norm = source is not None and source.op_type == "Mul" and any(x in inits for x in source.input)
            if len(names) <= 2 and norm:  # a norm's weight Mul (checked in _match)
                groups[tensor] = names

    order = {n.name: i for i, n in enumerate(g.node)}
    targets, unmatched = [], {}
    for tensor, names in sorted(groups.items(), key=lambda item: order[item[1][0]]):  # graph order
        why = sensitive.get(names[0], "")
        kind = DOWN if "MLP down" in why else QKV if why else GATE_UP
        if kind not in kinds:
            continue
        match = _match(kind, tensor, names, nodes, producer, readers, inits, outputs)
        if isinstance(match, str):
            unmatched |= dict.fromkeys(names, f"{kind} not smoothed: {match}")
        else:
            targets.append(match)
    return SmoothPlan(tuple(targets), unmatched)


def _match(kind, tensor, names, nodes, producer, readers, inits, outputs) -> SmoothTarget | str:
    """The smoothing site for `names` (the sensitive projections reading `tensor`), or why not."""
    if tensor in outputs:
        return f"{tensor} is a graph output"
    if sorted(n.name for n in readers[tensor]) != sorted(names):
        others = [n.name for n in readers[tensor] if n.name not in names]
        return f"{tensor} also feeds {', '.join(others[:3])}"
    channels = None
    for name in names:
        node = nodes[name]
        if node.op_type != "MatMul":
            return f"{name} is {node.op_type}, not MatMul"
        weight = inits[node.input[1]]
        if len(weight.dims) != 2 or len(readers[weight.name]) != 1:
            return f"{name}'s weight {weight.name} is not a 2-D initializer used once"
        if channels not in (None, weight.dims[0]):
            return f"{tensor}'s consumers disagree on the input width"
        channels = weight.dims[0]
    source = producer.get(tensor)
    if source is None or source.op_type != "Mul":
        return f"{tensor} is not produced by a Mul"
    if kind in NORM_FOLDED:  # RMSNorm: Mul(weight [C], normed) with the weight a constant
        constant = [x for x in source.input if x in inits]
        if len(constant) != 1 or len(source.input) != 2:
            return f"{source.name} is not a Mul by one weight initializer (the norm's scale)"
        weight = inits[constant[0]]
        if list(weight.dims)[-1:] != [channels] or any(d != 1 for d in list(weight.dims)[:-1]):
            return f"{source.name}'s weight {weight.name} has shape {list(weight.dims)}, not [{channels}]"
        if len(readers[weight.name]) != 1:
            return f"{source.name}'s weight {weight.name} is shared with other nodes"
        return SmoothTarget(kind, tensor, tuple(names), source.name, weight.name)
    ups = []  # X = silu(gate) · up: the operand that is a MatMul feeding only this Mul
    for operand in source.input:
        up = producer.get(operand)
        if up is not None and up.op_type == "MatMul" and up.input[1] in inits and len(readers[operand]) == 1:
            ups.append(up)
    if len(ups) != 1:
        operands = [getattr(producer.get(x), "op_type", "input") for x in source.input]
        return f"{source.name}'s operands ({', '.join(operands)}) have no single up-projection MatMul"
    up, weight = ups[0], inits[ups[0].input[1]]
    if len(weight.dims) != 2 or weight.dims[1] != channels or len(readers[weight.name]) != 1:
        return (
            f"up projection {up.name}'s weight {weight.name} is not a [*, {channels}] initializer used once"
        )
    if up.output[0] in outputs:
        return f"{up.output[0]} is a graph output"
    return SmoothTarget(kind, tensor, tuple(names), up.name, weight.name)


def smoothing_scales(activation_amax: np.ndarray, weights: Iterable[np.ndarray], alpha: float) -> np.ndarray:
    """s_j = max|X_j|^α / max|W_j,:|^(1−α), the row max taken over every consumer's W ([in, out]).
    Channels where either max is zero (or not finite) get s = 1; s is clamped to [MIN_SCALE, MAX_SCALE]."""
    act = np.asarray(activation_amax, np.float64)
    w = np.max(np.stack([np.abs(np.asarray(x, np.float64)).max(axis=1) for x in weights]), axis=0)
    ok = (act > 0) & (w > 0) & np.isfinite(act) & np.isfinite(w)
    s = np.ones_like(act)
    s[ok] = act[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return np.clip(s, MIN_SCALE, MAX_SCALE).astype(np.float32)


def fold_scales(model: onnx.ModelProto, target: SmoothTarget, s: np.ndarray) -> None:
    """X' = X / s, W' = diag(s) · W at one site, in place (exact in real arithmetic): the consumers'
    weight rows are multiplied by s, the producer's fold initializer divided by it."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for name in target.consumers:
        weight = inits[nodes[name].input[1]]
        _replace(weight, numpy_helper.to_array(weight) * s[:, None])
    fold = numpy_helper.to_array(inits[target.fold])
    _replace(inits[target.fold], fold / (s if target.kind in NORM_FOLDED else s[None, :]))


def smooth(model: onnx.ModelProto, plan: SmoothPlan, amax: dict[str, np.ndarray], alpha: float) -> dict:
    """Apply the plan in place (the model must hold its weights). Returns per-site scale statistics."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    stats = {}
    for target in plan.targets:
        weights = [numpy_helper.to_array(inits[nodes[name].input[1]]) for name in target.consumers]
        s = smoothing_scales(amax[target.activation], weights, alpha)
        fold_scales(model, target, s)
        stats[target.activation] = {
            "kind": target.kind,
            "fold": target.fold,
            "scale_min": float(s.min()),
            "scale_max": float(s.max()),
            "amax_before": float(np.max(amax[target.activation])),
            "amax_after": float(np.max(amax[target.activation] / s)),
        }
    return stats


def _replace(init: onnx.TensorProto, value: np.ndarray) -> None:
    init.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype), init.name))


def smoothed_from_fp32(
    fp32: Path, out: Path, plan: SmoothPlan, amax: dict[str, np.ndarray], alpha: float
) -> dict:
    """Write the smoothed copy of the fp32 graph to `out`; returns `smooth`'s statistics."""
    model = onnx.load(str(fp32))  # with weights
    stats = smooth(model, plan, amax, alpha)
    save_graph(model, out)
    return stats
