"""Write the Triton model repository variant for TensorRT engines.

The encoders become stock `platform: "tensorrt_plan"` models, served by Triton's own TensorRT
backend (max_batch_size 8, dynamic batching, the same input and output names as the ONNX Runtime
variant in triton_repo/); `llm` stays the Python-backend model from triton_repo/llm, whose runtime
loads the TensorRT text-decoder plan (runtime/engines/tensorrt.py) with our paged KV cache. Plain
TensorRT has no paged attention, so the LLM cannot be a `tensorrt_plan` model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from builder.errors import BuildError
from builder.manifest import EngineEntry, Manifest
from runtime.engine_loader import choose_component_precision

ENCODERS = ("vision_encoder", "audio_encoder")
MAX_BATCH = 8
QUEUE_DELAY_US = 2000
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64",
    "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}  # fmt: skip


class TritonRepoError(BuildError):
    """The engines directory cannot make a TensorRT Triton repository."""


def _dims(shape: list) -> str:
    return ", ".join(str(d) if isinstance(d, int) and d > 0 else "-1" for d in shape[1:])  # batch dim dropped


def _tensor(spec) -> str:
    if spec.dtype not in TRITON_TYPES:
        raise TritonRepoError(f"tensor {spec.name} has dtype {spec.dtype}, which Triton cannot carry")
    return f'{{ name: "{spec.name}" data_type: {TRITON_TYPES[spec.dtype]} dims: [ {_dims(spec.shape)} ] }}'


def plan_config(name: str, entry: EngineEntry) -> str:
    """config.pbtxt for one encoder plan run by Triton's TensorRT backend."""
    inputs = ",\n  ".join(_tensor(s) for s in entry.inputs)
    outputs = ",\n  ".join(_tensor(s) for s in entry.outputs)
    return (
        f"# {entry.component} {entry.precision}: a TensorRT plan for the stock Triton container.\n"
        f'name: "{name}"\n'
        'platform: "tensorrt_plan"\n'
        f"max_batch_size: {MAX_BATCH}\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}\n"
        f"input [\n  {inputs}\n]\n"
        f"output [\n  {outputs}\n]\n"
        "instance_group [ { kind: KIND_GPU count: 1 } ]\n"
        'default_model_filename: "model.plan"\n'
    )


def _set_parameter(config: str, key: str, value: str) -> str:
    marker = f'parameters {{ key: "{key}" value {{ string_value: "'
    start = config.find(marker)
    if start < 0:
        return config + f'{marker}{value}" }} }}\n'
    end = config.index('"', start + len(marker))
    return config[: start + len(marker)] + value + config[end:]


def write_tensorrt_repo(
    engines_dir: Path, source_repo: Path, out: Path, precision: str = "auto"
) -> list[str]:
    """Write the variant to `out` (replacing it); return the model names written."""
    manifest = Manifest.load(engines_dir)
    decoder = manifest.entry("text_decoder", choose_component_precision(manifest, "text_decoder", precision))
    if decoder is None or decoder.backend != "tensorrt":
        raise TritonRepoError(
            f"{engines_dir} holds no TensorRT text decoder; build one with `autoglm-trt build --backend tensorrt`"
        )
    if not (source_repo / "llm" / "config.pbtxt").is_file():
        raise TritonRepoError(f"{source_repo} has no llm/config.pbtxt to take the LLM model from")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source_repo / "llm", tmp / "llm", ignore=shutil.ignore_patterns("__pycache__"))
    llm_config = (tmp / "llm" / "config.pbtxt").read_text()
    llm_config = _set_parameter(llm_config, "engines_dir", str(engines_dir.resolve()))
    llm_config = _set_parameter(llm_config, "precision", decoder.precision)
    (tmp / "llm" / "config.pbtxt").write_text(llm_config)
    written = ["llm"]
    for component in ENCODERS:
        if not manifest.precisions(component):
            continue
        entry = manifest.entry(component, choose_component_precision(manifest, component, precision))
        if entry.backend != "tensorrt":
            raise TritonRepoError(
                f"{component} {entry.precision} in {engines_dir} is a {entry.backend} engine"
            )
        (tmp / component / "1").mkdir(parents=True)
        shutil.copy2(engines_dir / entry.file, tmp / component / "1" / "model.plan")
        (tmp / component / "config.pbtxt").write_text(plan_config(component, entry))
        written.append(component)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return written
