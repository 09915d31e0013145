"""Summarise the engine inspector's JSON: which engine layers fused several ONNX nodes.

`IEngineInspector.get_engine_information(LayerInformationFormat.JSON)` returns {"Layers": [...],
"Bindings": [...]} on TensorRT 10 and {"Layers": [...], "I/O Tensors": [...]} on TensorRT 11 (only
"Layers" is read here). With ProfilingVerbosity.DETAILED each layer is an object whose "Name" joins
the names of the layers fused into it with " + " and whose "Metadata" lists the ONNX nodes it
came from ("[ONNX Layer: <name>]", separated by the \\x1f character); with LAYER_NAMES_ONLY each
layer is just its name. onnx-tensorrt appends " | …" to the names of nodes inside ONNX local
functions, and one node can be listed more than once in a layer: each source is counted once,
without that suffix.
"""

from __future__ import annotations

import re

ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
EXAMPLES = 8


def _layer_sources(layer) -> list[str]:
    if isinstance(layer, str):
        names = layer.split(" + ")
    else:
        names = ONNX_LAYER.findall(str(layer.get("Metadata", ""))) or str(layer.get("Name", "")).split(" + ")
    return list(dict.fromkeys(name.split(" | ")[0].strip() for name in names))


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
