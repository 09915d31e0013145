"""A build step's JSON record: what its outputs were made from, so a rerun with the same inputs
skips the step. Every skip-if-up-to-date step in builder/ and calibration/ has this shape:

    step = StepRecord(work / "x.int4.json", wanted)
    if (previous := step.current(graph)) is not None:
        note(f"x int4 ONNX up to date: {graph}")
        return previous["summary"]
    with step.redo() as record:  # the old record is gone from here on
        save_graph(..., graph)
        record["summary"] = summary  # written with `wanted` when the block succeeds

A step that fails or is interrupted leaves no record, so its half-made outputs are never taken as
up to date. Outputs themselves are written under temporary names and renamed (runtime/onnx_files.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def matching_record(path: Path, wanted: dict) -> dict | None:
    """The JSON record at `path` when it holds every key of `wanted` with that value, else None
    (missing, unreadable, or made from other inputs): how build steps tell they are up to date."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in wanted.items()):
        return None
    return record


@dataclass(frozen=True)
class StepRecord:
    path: Path  # the record, beside the step's outputs
    wanted: dict  # what the outputs are made from (input hashes, versions, options)

    def current(self, *outputs: Path, whole: Callable[[Path], bool] | None = None) -> dict | None:
        """The record when it holds `wanted` and each of `outputs` is whole, else None. `whole`
        defaults to runtime.onnx_files.graph_complete: a graph and every data file it names."""
        if whole is None:
            from runtime.onnx_files import graph_complete  # onnx is slow to import; manifest readers skip it

            whole = graph_complete
        record = matching_record(self.path, self.wanted)
        return record if record is not None and all(map(whole, outputs)) else None

    @contextmanager
    def redo(self) -> Iterator[dict]:
        """Remove the record, run the block, then write the yielded dict (`wanted`, plus what the
        block adds to it). Nothing is written when the block raises."""
        self.path.unlink(missing_ok=True)
        record = dict(self.wanted)
        yield record
        write_json_atomic(self.path, record)
