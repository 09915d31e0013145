"""Optimization profiles (min / opt / max shape per input) from a graph's named dynamic axes.

Ranges come from the manifest's `axes` ({name: [min, max]}); the KV pool's `pool_blocks` axis
(not in the manifest: the pool is sized at serve time) spans 1 to enough blocks for max_batch full
sequences plus the null block. Chosen optimum shapes (TensorRT picks its kernels for these):
  * prefill: batch 1, 512 new tokens, 1 past block, logits at 1 position: a new prompt admitted
    alone is the common case, and a few hundred tokens is a typical chat or agent prompt;
  * decode: batch 8 (in-flight batching keeps decode full under load, where speed counts),
    1 token, 64 past blocks (1024 tokens of context), 1 logit position;
  * encoders (one profile): batch 8, the size Triton's dynamic batcher fills.
The text decoder gets both profiles (0 = prefill, 1 = decode); other graphs get one.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.errors import BuildError

PREFILL_OPT = {"batch": 1, "seq": 512, "blocks": 1, "logit_positions": 1}
DECODE_FIXED = {"seq": 1, "logit_positions": 1}
DECODE_OPT = {"batch": 8, "blocks": 64}
ENCODER_OPT = {"batch": 8}
POOL_AXIS = "pool_blocks"


class ProfileError(BuildError):
    """A graph axis has no range to build a TensorRT optimization profile from."""


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    name: str
    shapes: dict[str, ShapeRange]  # input name -> its range


def pool_blocks_max(axes: dict[str, list[int]]) -> int:
    return 1 + axes["batch"][1] * axes["blocks"][1]


def _ranges(axes: dict[str, list[int]]) -> dict[str, tuple[int, int]]:
    ranges = {name: (int(low), int(high)) for name, (low, high) in axes.items()}
    if "batch" in ranges and "blocks" in ranges:
        ranges.setdefault(POOL_AXIS, (1, pool_blocks_max(axes)))
    return ranges


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _profile(name: str, inputs: dict[str, list], ranges: dict, opt: dict, fixed: dict) -> Profile:
    shapes = {}
    for tensor, dims in inputs.items():
        low, best, high = [], [], []
        for dim in dims:
            if isinstance(dim, int) and dim > 0:
                low.append(dim), best.append(dim), high.append(dim)
                continue
            if dim not in ranges:
                raise ProfileError(
                    f"input '{tensor}' has a dynamic axis '{dim}' with no range in the manifest's axes "
                    f"({', '.join(sorted(ranges))}); the exporter must name it and the build must record "
                    "its [min, max]"
                )
            a, b = ranges[dim]
            if dim in fixed:
                a = b = _clamp(fixed[dim], a, b)
            low.append(a)
            high.append(b)
            best.append(_clamp(opt.get(dim, b if dim == POOL_AXIS else a), a, b))
        shapes[tensor] = ShapeRange(tuple(low), tuple(best), tuple(high))
    return Profile(name, shapes)


def profiles_for(inputs: dict[str, list], axes: dict[str, list[int]], decoder: bool) -> list[Profile]:
    """`inputs`: graph input name -> dims (ints, or axis names for dynamic dims)."""
    ranges = _ranges(axes)
    if decoder:
        return [
            _profile("prefill", inputs, ranges, PREFILL_OPT, {}),
            _profile("decode", inputs, ranges, DECODE_OPT, DECODE_FIXED),
        ]
    return [_profile("default", inputs, ranges, ENCODER_OPT, {})]


def graph_inputs(graph_path) -> dict[str, list]:
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    return {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in model.graph.input
        if value.name not in initializers
    }
