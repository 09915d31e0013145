"""The text decoder in pipeline stages: engines over contiguous layer ranges, run in order each step.

`build --pipeline-stages N` writes one engine per stage (runtime/decoder_io.py) and lists them in
the manifest with their layer ranges. To the decoder and the scheduler a `StagedEngine` is one
engine: the block tables and the slot mapping are shared, while each stage's engine creates its
own KV pool (its layers only) where it computes, on its own device (`--devices`). A step runs the
first stage on the token inputs, hands each stage's hidden states to the next and returns the last
stage's logits. On GPUs the hidden states stay in device memory (a DeviceTensor) and the next stage
copies them peer to peer onto its own GPU; on the CPU they are host arrays.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from runtime import decoder_io as io
from runtime.engines.base import Engine
from runtime.errors import EngineDirError
from runtime.kv.pool import KVPool, KVPoolSpec, SlotMapping
from runtime.manifest import Manifest


class StagedKVPool(KVPool):
    """One pool per stage, each its engine's own; only the stages read them."""

    def __init__(self, spec: KVPoolSpec, pools: list[KVPool]) -> None:
        self.spec, self.pools = spec, pools

    def feeds(self) -> dict:
        raise TypeError("each pipeline stage feeds its own pool")

    def write(self, new_kv, slots: SlotMapping) -> None:
        raise TypeError("each pipeline stage writes its own pool")

    def place(
        self, keys: list[str], tables: list[list[int]], past_lens: list[int], new_lens: list[int]
    ) -> np.ndarray:
        """Every stage's pool places the rows; pools of one kind, fed the same calls, agree."""
        orders = [pool.place(keys, tables, past_lens, new_lens) for pool in self.pools]
        assert all((order == orders[0]).all() for order in orders), (
            "the stages' pools placed rows differently"
        )
        return orders[0]


class StagedEngine(Engine):
    def __init__(self, stages: list[Engine], layers: list[tuple[int, int]]) -> None:
        self.stages, self.layers = stages, layers
        # What the decoder builds feeds for: every stage's inputs but the hidden states handed on.
        self.input_dtypes = {
            name: dtype
            for stage in stages
            for name, dtype in stage.input_dtypes.items()
            if name != io.HIDDEN_IN
        }
        self.batched_prefill_with_past = all(stage.batched_prefill_with_past for stage in stages)
        self.batched_prefill = all(stage.batched_prefill for stage in stages)

    def run(
        self, feeds: dict[str, np.ndarray], outputs: list[str], into: dict[str, np.ndarray] | None = None
    ) -> list[np.ndarray]:
        raise TypeError("a staged decoder runs through run_step, with its stages' pools")

    def create_kv_pool(self, spec: KVPoolSpec) -> StagedKVPool:
        pools = []
        for stage, (start, stop) in zip(self.stages, self.layers, strict=True):
            dtype = stage.input_dtypes[io.POOL_DTYPE_INPUT]
            stage_spec = replace(spec, num_layers=stop - start, dtype=dtype)
            pools.append(stage.create_kv_pool(stage_spec))
        return StagedKVPool(spec, pools)

    def run_step(
        self, feeds: dict[str, np.ndarray], pool: KVPool, slots: SlotMapping, output: str = io.LOGITS
    ) -> np.ndarray:
        hidden = None
        last = len(self.stages) - 1
        for index, (stage, stage_pool) in enumerate(zip(self.stages, pool.pools, strict=True)):
            stage_feeds = {name: feeds[name] for name in stage.input_dtypes if name in feeds}
            if hidden is not None:
                stage_feeds[io.HIDDEN_IN] = hidden
            hidden = stage.run_step(
                stage_feeds, stage_pool, slots, output if index == last else io.HIDDEN_OUT
            )
        return hidden


def check_stages(manifest: Manifest, precision: str, hint: str) -> None:
    """Raise EngineDirError unless the manifest's stages cover the decoder's layers in order and
    each stage engine at `precision` takes the inputs and outputs of its place and layer count."""
    stages = manifest.stages
    num_layers = manifest.decoder["num_layers"]
    bounds = [tuple(stage["layers"]) for stage in stages]
    if [a for a, _ in bounds] != [0, *(b for _, b in bounds[:-1])] or bounds[-1][1] != num_layers:
        raise EngineDirError(
            f"the manifest's pipeline stages {bounds} do not cover the decoder's {num_layers} layers in "
            f"order; {hint}"
        )
    for index, stage in enumerate(stages):
        entry = manifest.entry(stage["component"], precision)
        if entry is None:
            raise EngineDirError(f"pipeline stage {stage['component']} has no {precision} engine; {hint}")
        start, stop = bounds[index]
        first, last = index == 0, index == len(stages) - 1
        expected = set(io.input_names(stop - start, first=first, last=last))  # media inputs optional
        inputs = {t.name: t for t in entry.inputs}
        layers_ok = sum(1 for name in inputs if name.startswith("key_cache.")) == stop - start
        outputs = {t.name for t in entry.outputs} - set(
            io.kv_present_names(stop - start)
        )  # fused ORT engines'
        if not layers_ok or expected - set(inputs) or outputs != set(io.output_names(last)):
            raise EngineDirError(
                f"engine {entry.file} does not take what pipeline stage {index + 1} of {len(stages)} "
                f"(layers {start}–{stop - 1}) needs: the engines and the manifest disagree; {hint}"
            )
