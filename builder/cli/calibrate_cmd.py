"""`autoglm-trt calibrate`: INT8 entropy calibration, the Q/DQ graph and the TensorRT cache.

Writes into OUT (the build work dir, build/NAME) per component with int8 support:
`<component>.calibration.json` (per-tensor thresholds), `<component>.int8.onnx` (Q/DQ) and
`<component>.int8.calibration.cache` (TensorRT's format). `build --precision int8` with the same
work dir reuses them while the fp32 graph and the data are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from builder.cli.options import MaxSeqLen, export_config
from builder.config import CalibrationConfig
from builder.model_dir import open_model_dir
from runtime.progress import console, stage

CalibData = Annotated[
    Path | None,
    typer.Option(
        help="Directory of calibration files (.txt/.md text; images; .wav audio). Default: built-in data."
    ),
]
CalibSamples = Annotated[
    int, typer.Option(min=1, help="Number of calibration samples, taken in sorted file order.")
]
Int8Sensitive = Annotated[
    bool,
    typer.Option(
        "--int8-sensitive",
        help="Also quantise decoders' q/k/v and MLP down projections (kept in higher precision by default: "
        "their activation outliers cost accuracy).",
    ),
]
SmoothAlpha = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="SmoothQuant α: before calibration, move decoders' q/k/v input outliers into their weights "
        "(an exact fp32 rewrite), so those projections run in int8 too (MLP down projections as well "
        "with --int8-sensitive). 0 keeps them in higher precision instead.",
    ),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option(
        help="Glob on node names to keep in higher precision; repeat for several (lm_head always is)."
    ),
]


def calibrate(
    model: Annotated[Path, typer.Option(help="Hugging Face model directory (models/NAME).")],
    out: Annotated[Path, typer.Option(help="Build directory for the graphs and cache (build/NAME).")],
    data: CalibData = None,
    samples: CalibSamples = CalibrationConfig.samples,
    exclude: Exclude = None,
    int8_sensitive: Int8Sensitive = False,
    smooth_alpha: SmoothAlpha = CalibrationConfig.smooth_alpha,
    component: Annotated[
        list[str] | None,
        typer.Option(
            help="Calibrate only this component (text_decoder, vision_encoder, …); repeat. Default: all."
        ),
    ] = None,
    max_seq_len: MaxSeqLen = 2048,
) -> None:
    """Calibrate INT8 (exporting the fp32 graph first if needed) and write the Q/DQ graph and cache."""
    from builder.build.components import components_for
    from builder.build.pipeline import fp32_onnx_from_model
    from builder.quantize.int8_step import calibration_set, int8_onnx_from_fp32
    from calibration.errors import CalibrationError
    from runtime.onnx_files import graph_digest

    model_dir = open_model_dir(model)
    cfg = CalibrationConfig(data, samples, tuple(exclude or ()), int8_sensitive, smooth_alpha)
    components = [c for c in components_for(model_dir) if c.calibration is not None]
    if component:
        known = [c.name for c in components]
        unknown = [name for name in component if name not in known]
        if unknown:
            raise CalibrationError(
                f"--component {unknown[0]} is not one this model can calibrate; choose from {', '.join(known)}"
            )
        components = [c for c in components if c.name in component]
    sets = {c.name: calibration_set(c, model_dir, cfg) for c in components}  # bad data fails here
    out.mkdir(parents=True, exist_ok=True)
    with stage(f"hash {model}"):
        source_hash = model_dir.source_hash()
    export_cfg = export_config(model_dir, max_seq_len)
    loaded = None

    def load_model():
        nonlocal loaded
        if loaded is None:
            loaded = model_dir.load()
        return loaded

    for component in components:
        fp32 = fp32_onnx_from_model(component, load_model, model_dir, export_cfg, out, source_hash)
        # graph_digest, as `build` keys its records: a calibrate after a build reuses its steps
        int8 = int8_onnx_from_fp32(
            component, model_dir, fp32, graph_digest(fp32), cfg, out, sets[component.name]
        )
        console.print(f"  {component.name}: {int8.graph}  {int8.cache}")
