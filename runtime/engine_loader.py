"""Load an engine after checking it against its manifest entry (hash and tool versions)."""

from __future__ import annotations

from pathlib import Path

from runtime.compat import runtime_versions
from runtime.engine_files import ExpectedFile, check_files
from runtime.engines.base import Engine
from runtime.errors import EngineDirError, MissingEncoderError, StaleEngineError
from runtime.manifest import TEXT_DECODER, EngineEntry, Manifest

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
    verify: bool = False,
    device: int | None = None,
) -> Engine:
    """`verify` hashes every file of the engine even if it was verified before; `device` the CUDA
    device to run on where there is one (None: the first)."""
    entry = select_entry(manifest, engines_dir, component, precision)
    path = verify_entry(manifest, engines_dir, entry, verify)
    if entry.backend == "onnxruntime":
        from runtime.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, threads=threads, device=device)
    if entry.backend == "tensorrt":
        from runtime.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(path, device=device)
    raise EngineDirError(
        f"{path} is a {entry.backend} engine, which this runtime cannot load yet; "
        f"{rebuild_hint(manifest, engines_dir, entry.precision)} --backend onnxruntime"
    )


def load_decoder(
    manifest: Manifest,
    engines_dir: Path,
    precision: str,
    threads: int = 0,
    devices: tuple[int, ...] = (),
) -> Engine:
    """The text decoder: its single engine, or its pipeline stages as one StagedEngine (runtime/stages.py),
    stage i on `devices[i]`. `devices` () : every stage on the first device there is (or the CPU)."""
    components = manifest.decoder_components()
    if devices and len(devices) != len(components):
        what = f"{len(components)} pipeline stages" if manifest.stages else "a single graph (1 stage)"
        raise EngineDirError(
            f"--devices names {len(devices)} device(s) but the text decoder of {engines_dir} is {what}: "
            f"name one device per stage, or rebuild with --pipeline-stages {len(devices)}"
        )
    placed = devices or (None,) * len(components)
    if not manifest.stages:
        return load_engine(manifest, engines_dir, TEXT_DECODER, precision, threads, device=placed[0])
    from runtime.stages import StagedEngine, check_stages

    if precision not in manifest.precisions(TEXT_DECODER):
        select_entry(manifest, engines_dir, TEXT_DECODER, precision)  # names what is built
    check_stages(manifest, precision, rebuild_hint(manifest, engines_dir, precision))
    engines = [
        load_engine(manifest, engines_dir, component, precision, threads, device=device)
        for component, device in zip(components, placed, strict=True)
    ]
    return StagedEngine(engines, [tuple(stage["layers"]) for stage in manifest.stages])
