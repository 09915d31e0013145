"""Summarise the engine inspector's JSON: which engine layers fused several ONNX nodes.

`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)` returns {"Layers": [...],
"Bindings": [...]}. With ProfilingVerbosity.DETAILED each layer is an object whose "Name" joins
the names of the layers fused into it with " + " and whose "Metadata" lists the ONNX nodes it
came from ("[ONNX Layer: <name>]", separated by the \\x1f character); with LAYER_NAMES_ONLY each
layer is just its name.
"""

from __future__ import annotations

import re

ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
EXAMPLES = 8


def _layer_sources(layer) -> list[str]:
    if isinstance(layer, str):
        return [part.strip() for part in layer.split(" + ")]
    sources = ONNX_LAYER.findall(str(layer.get("Metadata", "")))
    if sources:
        return sources
    return [part.strip() for part in str(layer.get("Name", "")).split(" + ")]


def fusion_summary(report: dict) -> dict:
    layers = report.get("Layers", [])
    fused = []
    onnx_nodes = 0
    for layer in layers:
        sources = _layer_sources(layer)
        onnx_nodes += len(sources)
        if len(sources) > 1:
            kind = layer.get("LayerType", "layer") if isinstance(layer, dict) else "layer"
            fused.append(f"{kind}: {' + '.join(sources[:4])}{' + …' if len(sources) > 4 else ''}")
    return {
        "layers": len(layers),
        "onnx_nodes": onnx_nodes,
        "fused_layers": len(fused),
        "examples": fused[:EXAMPLES],
    }
