"""Load an engine after checking it against its manifest entry (hash and tool versions)."""

from __future__ import annotations

from pathlib import Path

from runtime.compat import runtime_versions
from runtime.engine_files import ExpectedFile, check_files
from runtime.engines.base import Engine
from runtime.errors import EngineDirError, MissingEncoderError, StaleEngineError
from runtime.manifest import EngineEntry, Manifest

TEXT_DECODER = "text_decoder"
PRECISION_PREFERENCE = ("int4", "int8", "fp16", "fp32")  # what `auto` takes: the smallest engine built


def choose_component_precision(manifest: Manifest, component: str, requested: str) -> str:
    """The precision to load for `component`. `auto` takes the first built of int4 > int8 > fp16 > fp32.
    The text decoder gets exactly what was asked (select_entry names what is built if it is not);
    an encoder may lack a precision the decoder has (e.g. int8 or int4) and falls back the same way, since
    any encoder precision feeds any decoder."""
    built = manifest.precisions(component)
    if requested in built or (component == TEXT_DECODER and requested != "auto"):
        return requested
    if not built:
        if component == TEXT_DECODER:
            raise EngineDirError(
                "the manifest lists no text_decoder engine; rebuild with `autoglm-trt build`"
            )
        raise MissingEncoderError(f"the engines of {manifest.model.get('name')} include no {component}")
    return next(p for p in PRECISION_PREFERENCE if p in built)


def rebuild_hint(manifest: Manifest, engines_dir: Path, precision: str) -> str:
    source = manifest.model.get("source_dir", "models/NAME")
    return f"rebuild it: autoglm-trt build --model {source} --precision {precision} --out {engines_dir}"


def select_entry(manifest: Manifest, engines_dir: Path, component: str, precision: str) -> EngineEntry:
    entry = manifest.entry(component, precision)
    if entry is None:
        built = ", ".join(manifest.precisions(component)) or "none"
        raise EngineDirError(
            f"{engines_dir} has no {precision} {component} engine (built: {built}); "
            f"pick one of those with --precision, or {rebuild_hint(manifest, engines_dir, precision)}"
        )
    return entry


def expected_files(entry: EngineEntry) -> list[ExpectedFile]:
    files = [ExpectedFile(entry.file, entry.size, entry.sha256)]
    return files + [ExpectedFile(d["file"], d["size"], d["sha256"]) for d in entry.data_files]


def verify_entry(manifest: Manifest, engines_dir: Path, entry: EngineEntry, verify: bool = False) -> Path:
    """The engine's path once its files check out (engine_files.py: sizes always, hashes once per
    file version, or every time with `verify`) and its tools match this machine's."""
    path = engines_dir / entry.file
    hint = rebuild_hint(manifest, engines_dir, entry.precision)
    check_files(engines_dir, expected_files(entry), hint, verify)
    installed = runtime_versions(entry.backend)
    if installed != entry.tools:
        raise StaleEngineError(
            f"{path} was built with {entry.tools} but this machine has {installed}; {hint}"
        )
    return path


def verify_engines(manifest: Manifest, engines_dir: Path, precision: str) -> None:
    """Hash every file of the engines a run at `precision` may load (`--verify`): the decoder's and
    each encoder's, as choose_component_precision picks them. Loads after this find them verified."""
    for component in manifest.engines:
        chosen = choose_component_precision(manifest, component, precision)
        verify_entry(
            manifest, engines_dir, select_entry(manifest, engines_dir, component, chosen), verify=True
        )


def load_engine(
    manifest: Manifest,
    engines_dir: Path,
    component: str,
    precision: str,
    threads: int = 0,
    spinning: bool = True,
    verify: bool = False,
) -> Engine:
    """`spinning` False for processes that call several engines in turn (runtime/engines/onnxruntime.py);
    `verify` hashes every file of the engine even if it was verified before."""
    entry = select_entry(manifest, engines_dir, component, precision)
    path = verify_entry(manifest, engines_dir, entry, verify)
    if entry.backend == "onnxruntime":
        from runtime.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, threads=threads, spinning=spinning)
    if entry.backend == "tensorrt":
        from runtime.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(path)
    raise EngineDirError(
        f"{path} is a {entry.backend} engine, which this runtime cannot load yet; "
        f"{rebuild_hint(manifest, engines_dir, entry.precision)} --backend onnxruntime"
    )
