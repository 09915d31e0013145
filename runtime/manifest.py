"""engines/<model>/manifest.json: what was built, from what, with which tools.

Torch-free on purpose: the runtime reads it on machines that only serve. The runtime refuses an
engine whose file hash or tool versions do not match (runtime/engine_loader.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.build_records import write_json_atomic
from runtime.errors import EngineDirError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TEXT_DECODER = "text_decoder"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: list  # ints and symbolic axis names


@dataclass(frozen=True)
class EngineEntry:
    component: str  # "text_decoder"
    precision: str  # fp32 | fp16 | int8
    backend: str  # onnxruntime | tensorrt
    file: str  # relative to the engines dir
    sha256: str
    graph_sha256: str  # the precision ONNX it was built from (staleness check on rebuild)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    build_seconds: float
    tools: dict[str, str]  # versions that must match at load time
    calibration: dict | None = None
    report: dict = field(default_factory=dict)  # backend-specific: fusions, node counts
    size: int | None = None  # bytes of `file` (None in manifests written before sizes were)
    # External data the engine file names (large ONNX Runtime engines): {file, size, sha256}
    data_files: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> EngineEntry:
        data = dict(data)
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        return cls(**data)


@dataclass
class Manifest:
    model: dict  # name, source_dir, source_hash, model_type, family
    decoder: dict  # DecoderShape + position_rank + limits (max_batch, max_seq_len, block_size)
    axes: dict[str, list[int]]  # dynamic axis name -> [min, max] (the batch profile is 1–8)
    tokenizer_dir: str = "tokenizer"
    build_tools: dict[str, str] = field(default_factory=dict)  # torch, transformers, onnx, … (record only)
    engines: dict[str, dict[str, EngineEntry]] = field(default_factory=dict)
    # Per media encoder ("vision_encoder", "audio_encoder"): input shape, tokens per image/clip,
    # hidden size, placeholder token ids and preprocessing config (what the runtime needs to
    # turn files into encoder inputs without the model dir).
    encoders: dict[str, dict] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def entry(self, component: str, precision: str) -> EngineEntry | None:
        return self.engines.get(component, {}).get(precision)

    def put(self, entry: EngineEntry) -> None:
        self.engines.setdefault(entry.component, {})[entry.precision] = entry

    def precisions(self, component: str) -> list[str]:
        """The precisions built; for a text decoder built in pipeline stages, those every stage has."""
        if component == TEXT_DECODER and self.stages:
            built = [set(self.engines.get(c, {})) for c in self.decoder_components()]
            return sorted(set.intersection(*built))
        return sorted(self.engines.get(component, {}))

    @property
    def stages(self) -> list[dict]:
        """The text decoder's pipeline stages, in order: {component, layers: [start, stop)}; []
        for a single graph (`build --pipeline-stages N`, runtime/stages.py)."""
        return self.decoder.get("stages", [])

    def decoder_components(self) -> list[str]:
        """The components that make the text decoder: its stages, or the single graph."""
        return [stage["component"] for stage in self.stages] or [TEXT_DECODER]

    def decoder_backend(self, precision: str) -> str:
        return self.engines[self.decoder_components()[0]][precision].backend

    def save(self, engines_dir: Path) -> None:
        write_json_atomic(engines_dir / MANIFEST, asdict(self))

    @classmethod
    def load(cls, engines_dir: Path) -> Manifest:
        path = engines_dir / MANIFEST
        hint = "build engines with `autoglm-trt build --model models/NAME --out engines/NAME`"
        if not engines_dir.is_dir():
            raise EngineDirError(f"engines directory {engines_dir} does not exist; {hint}")
        if not path.is_file():
            raise EngineDirError(f"{engines_dir} has no {MANIFEST}, so it holds no built engines; {hint}")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise EngineDirError(f"{path} is unreadable ({error}); rebuild: {hint}") from None
        if data.get("format_version") != FORMAT_VERSION:
            raise EngineDirError(
                f"{path} has format version {data.get('format_version')}, this tool reads "
                f"{FORMAT_VERSION}; rebuild: {hint}"
            )
        engines = {
            component: {p: EngineEntry.from_dict(e) for p, e in by_precision.items()}
            for component, by_precision in data.pop("engines").items()
        }
        return cls(**data, engines=engines)
