"""Give each layer's GroupQueryAttention its past as an input it updates in place: no gathered past.

The portable graph takes the pool per layer (`key_cache.{l}`, `value_cache.{l}` [NB, bs, KVH, D])
and gathers, reshapes and transposes its blocks into GQA's past [B, KVH, P, D], a copy per layer
and per K/V on every call, which ORT's CPU GQA then copies again into its `present` output
(runtime/kv/slot_pool.py has the figures). The ORT engine instead takes that past directly:

    key_cache.{l}, value_cache.{l}                  [B, KVH, S, D]   inputs: rows of the runtime's slots
    present.key_cache.{l}, present.value_cache.{l}  [B, KVH, S, D]   outputs: GQA's present

The runtime binds each present to its input's memory, so GQA writes only the new tokens' K/V, at
each sequence's past_lens. The new tokens' K/V still leave through `new_kv`, for the paged pool.
"""

from __future__ import annotations

import onnx_ir as ir

from runtime import decoder_io as io
from runtime.engines.onnxruntime import KV_LAYOUT, SLOTS

PAST, PRESENT = {"key_cache": 3, "value_cache": 4}, {"key_cache": 1, "value_cache": 2}  # GQA's slots


def _past_chain(cache: ir.Value) -> tuple[list[ir.Node], ir.Node] | None:
    """([Gather, Reshape, Transpose] consuming `cache`, the GroupQueryAttention reading it as its
    past), when that is all that reads it."""
    chain = []
    value = cache
    for op_type in ("Gather", "Reshape", "Transpose"):
        users = list(value.uses())
        if len(users) != 1 or users[0].node.op_type != op_type:
            return None
        chain.append(users[0].node)
        value = chain[-1].outputs[0]
    users = list(value.uses())
    kind = cache.name.split(".")[0]
    if len(users) != 1 or users[0].node.op_type != "GroupQueryAttention" or users[0].idx != PAST[kind]:
        return None
    if chain[0].attributes.get_int("axis", 0) != 0 or list(chain[2].attributes["perm"].as_ints()) != [
        0,
        2,
        1,
        3,
    ]:
        return None
    return chain, users[0].node


def fuse_kv_slots(model: ir.Model) -> int:
    """Make every layer's K/V input GQA's past and its present an output; returns the number of
    layers rewritten (0 when any layer reads its pool otherwise, e.g. an unfused attention)."""
    graph = model.graph
    inputs = {value.name: value for value in graph.inputs}
    layers = sum(1 for name in inputs if name.startswith("key_cache."))
    names = io.kv_input_names(layers)
    if not layers or any(name not in inputs for name in names):
        return 0
    chains = [_past_chain(inputs[name]) for name in names]
    if any(chain is None for chain in chains):
        return 0
    _, _, kv_heads, head_dim = inputs[names[0]].shape
    for name, present, (chain, attention) in zip(names, io.kv_present_names(layers), chains, strict=True):
        old = inputs[name]
        past = ir.Value(
            name=name, shape=ir.Shape(["batch", kv_heads, "slot_tokens", head_dim]), type=old.type
        )
        graph.inputs[graph.inputs.index(old)] = past
        attention.replace_input_with(PAST[name.split(".")[0]], past)
        for node in reversed(chain):
            graph.remove(node, safe=True)
        output = attention.outputs[PRESENT[name.split(".")[0]]]
        output.name = present
        graph.outputs.append(output)
    model.metadata_props[KV_LAYOUT] = SLOTS
    return layers
