"""Check an engine's files against its manifest entry before anything loads them.

Sizes are checked on every load. Hashes are checked once per version of a file: a file whose
sha256 matched is recorded in `.verified.json` with its size, inode and nanosecond mtime, and
later loads trust it while those are unchanged. Any write to a file changes its mtime, and
replacing it changes its inode, so corruption, a partial copy or a stale file from another build
is still caught; only someone who resets mtimes deliberately goes unseen, and they could as well
rewrite manifest.json. `verify=True` (`--verify`) hashes every file regardless. The build records
what it hashed, so the first start after a build reads no weights; a copied engines dir (new
inodes) is hashed once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import StaleEngineError
from runtime.onnx_files import sha256_file

VERIFIED = ".verified.json"


@dataclass(frozen=True)
class ExpectedFile:
    name: str  # relative to the engines dir
    size: int | None  # None: not recorded (manifests written before sizes were)
    sha256: str


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_ino, stat.st_mtime_ns]


def _read_verified(engines_dir: Path) -> dict:
    try:
        verified = json.loads((engines_dir / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return verified if isinstance(verified, dict) else {}


def record_verified(engines_dir: Path, hashed: dict[str, str]) -> None:
    """Remember that the files `hashed` ({name: sha256}) were hashed as they are now. A read-only
    engines dir is fine: loads then hash every time."""
    verified = _read_verified(engines_dir)
    for name, sha256 in hashed.items():
        verified[name] = {"stamp": _stamp(engines_dir / name), "sha256": sha256}
    tmp = engines_dir / f"{VERIFIED}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(verified, indent=1) + "\n")
        os.replace(tmp, engines_dir / VERIFIED)
    except OSError:
        tmp.unlink(missing_ok=True)


def check_files(engines_dir: Path, files: list[ExpectedFile], hint: str, verify: bool = False) -> None:
    """Raise StaleEngineError naming the first missing, resized or changed file."""
    verified = {} if verify else _read_verified(engines_dir)
    hashed = {}
    for expected in files:
        path = engines_dir / expected.name
        if not path.is_file():
            raise StaleEngineError(f"engine file {path} listed in the manifest is missing; {hint}")
        size = path.stat().st_size
        if expected.size is not None and size != expected.size:
            raise StaleEngineError(
                f"engine file {path} is {size} bytes, the manifest says {expected.size} "
                f"(truncated, or from another build); {hint}"
            )
        known = verified.get(expected.name, {})
        if known.get("stamp") == _stamp(path) and known.get("sha256") == expected.sha256:
            continue
        if sha256_file(path) != expected.sha256:
            raise StaleEngineError(
                f"engine file {path} does not match its manifest hash (modified or corrupt); {hint}"
            )
        hashed[expected.name] = expected.sha256
    if hashed:
        record_verified(engines_dir, hashed)
