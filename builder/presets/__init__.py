"""Model presets: named recipes that write a complete Hugging Face model directory.

`create_preset` builds into a hidden sibling directory and renames it into place, so an
interrupted or failed creation never leaves a half-written model at `out`.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from builder.errors import ModelDirError, UnknownPresetError

MARKER = "autoglm_preset.json"
CREATED_BY = "autoglm-trt"
GLM4V_TINY_SEED = 0
GLM4V_600M_SEED = 0
# Presets that write a config and tokenizer but no weights (exact shapes for `build --check-only`).
SHAPE_ONLY_PRESETS = frozenset({"autoglm-phone-9b-shape"})


# The preset modules import torch and transformers; load them only when a preset is created.
def _glm4v_tiny(out: Path) -> None:
    from builder.presets.glm4v_tiny import build

    build(out, seed=GLM4V_TINY_SEED)


def _glm4v_600m(out: Path) -> None:
    from builder.presets.glm4v_600m import build

    build(out, seed=GLM4V_600M_SEED)


def _smollm2_135m(out: Path) -> None:
    from builder.presets.smollm2 import build

    build(out)


def _autoglm_phone_9b_shape(out: Path) -> None:
    from builder.presets.autoglm_phone_9b import build

    build(out)


PRESETS: dict[str, Callable[[Path], None]] = {
    "glm4v-tiny": _glm4v_tiny,
    "glm4v-600m": _glm4v_600m,
    "smollm2-135m": _smollm2_135m,
    "autoglm-phone-9b-shape": _autoglm_phone_9b_shape,
}
_SEEDS: dict[str, int | None] = {
    "glm4v-tiny": GLM4V_TINY_SEED,
    "glm4v-600m": GLM4V_600M_SEED,
    "smollm2-135m": None,
    "autoglm-phone-9b-shape": None,
}


def create_preset(name: str, out: Path) -> Path:
    """Create preset `name` at `out` and return `out`.

    `out` may be missing, an empty directory, or a model this tool made from the same preset
    (replaced). Anything else is refused with `ModelDirError`.
    """
    if name not in PRESETS:
        raise UnknownPresetError(
            f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}. "
            "Pass one of these, e.g. `--preset glm4v-tiny`."
        )
    out = Path(out)
    _check_target(name, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.creating-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        PRESETS[name](staging)
        marker = {"preset": name, "seed": _SEEDS.get(name), "created_by": CREATED_BY}
        if name in SHAPE_ONLY_PRESETS:
            marker["weights"] = "none"
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _move_into_place(staging, out)
    except BaseException:  # also Ctrl-C: never leave the staging dir behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_preset_marker(path: Path) -> dict[str, Any] | None:
    """The marker of a model directory this tool created, or None if `path` is not one."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("created_by") != CREATED_BY:
        return None
    return marker


def is_shape_only(path: Path) -> bool:
    """Whether `path` is a model directory this tool created with a config and tokenizer but no weights."""
    marker = read_preset_marker(path)
    return marker is not None and marker.get("weights") == "none"


def _check_target(name: str, out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ModelDirError(f"--out {out} exists and is a file; choose a new directory or remove the file")
    if not any(out.iterdir()):
        return
    marker = read_preset_marker(out)
    if marker is None:
        raise ModelDirError(
            f"--out {out} is a non-empty directory that autoglm-trt did not create (no {MARKER}); "
            "refusing to overwrite it. Choose a new or empty directory, or remove it yourself."
        )
    if marker.get("preset") != name:
        raise ModelDirError(
            f"--out {out} holds the {marker.get('preset')!r} preset, not {name!r}; "
            "choose another directory or remove it first."
        )


def _move_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    # Replacing an existing dir: move it aside first so a failed rename can put it back.
    old = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
