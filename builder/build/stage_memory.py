"""Device memory of each text decoder pipeline stage, from its shape-only graphs (`build
--backend tensorrt --check-only --pipeline-stages N` on a config-only model dir).

Per stage and precision:
  weights   the stage graph's weight bytes (dims × type of every initializer: what TensorRT loads)
  KV pool   K and V of the stage's layers for max_batch × max_seq_len tokens, at the KV dtype the
            engine takes: fp32 for fp32, fp16 otherwise (int8/int4 plans are parsed with fp16 KV,
            builder/build/tensorrt_fp16_kv.py)
  encoders  the vision encoder's weights, on the first stage's device (it feeds the embeddings)
int8 weights are not exported shape-only (they need calibration): they are counted as the fp16
graph's at one byte per weight element (W8A8 and weight-only W8 alike; per-channel scales are
< 0.1 %). Activations, TensorRT's workspace and the CUDA context come on top (a few hundred MiB
to ~1 GiB per device, depending on the prefill profile), and are not counted here.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from builder.build.components import Component
from builder.build.shape_only_report import GraphSummary
from builder.config import BuildConfig
from builder.model_dir import ModelDir
from runtime.progress import console

GiB = 2**30


@dataclass(frozen=True)
class StageMemory:
    stage: int
    layers: tuple[int, int]
    precision: str
    weights_bytes: int
    weights_estimated: bool  # int8: from the fp16 graph (see the module docstring)
    kv_pool_bytes: int
    encoder_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_pool_bytes + self.encoder_bytes


def stage_memory(
    model_dir: ModelDir, cfg: BuildConfig, components: list[Component], summaries: list[GraphSummary]
) -> list[StageMemory]:
    shape = model_dir.family.shape(model_dir.load_config())
    tokens = cfg.export.max_batch * cfg.export.max_seq_len
    weights = {(s.component, s.precision): s.weight_bytes for s in summaries}
    stages = [c for c in components if c.layers]
    rows = []
    for precision in [p.value for p in cfg.precisions]:
        encoder_precision = "fp16" if precision == "int8" else precision
        for index, component in enumerate(stages):
            if precision == "int8":
                fp16 = weights.get((component.name, "fp16"))
                if fp16 is None:
                    continue
                held, estimated = fp16 // 2, True
            elif (component.name, precision) in weights:
                held, estimated = weights[(component.name, precision)], False
            else:
                continue
            start, stop = component.layers
            kv_itemsize = 4 if precision == "fp32" else 2
            kv = 2 * (stop - start) * shape.num_kv_heads * shape.head_dim * kv_itemsize * tokens
            encoder = weights.get(("vision_encoder", encoder_precision), 0) if index == 0 else 0
            rows.append(StageMemory(index, (start, stop), precision, held, estimated, kv, encoder))
    return rows


def print_stage_memory(rows: list[StageMemory], cfg: BuildConfig) -> None:
    if not rows:
        return
    tokens = f"{cfg.export.max_batch} × {cfg.export.max_seq_len} tokens"
    table = Table(title=f"Device memory per pipeline stage (GiB; KV pool for {tokens})", title_justify="left")
    for column in ("precision", "stage", "layers", "weights", "KV pool", "encoder", "total"):
        table.add_column(column, justify="left" if column in ("precision", "layers") else "right")
    for row in rows:
        weights = f"{row.weights_bytes / GiB:.2f}" + ("*" if row.weights_estimated else "")
        table.add_row(row.precision, str(row.stage), f"{row.layers[0]}–{row.layers[1] - 1}", weights,
                      f"{row.kv_pool_bytes / GiB:.2f}", f"{row.encoder_bytes / GiB:.2f}",
                      f"{row.total_bytes / GiB:.2f}")  # fmt: skip
    console.print(table)
    if any(row.weights_estimated for row in rows):
        console.print("* int8: the fp16 graph's weights at one byte per element (not exported shape-only)")
    console.print("Activations, TensorRT's workspace and the CUDA context come on top of each total.")
