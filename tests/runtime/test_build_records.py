"""runtime/build_records.py: when a step counts as up to date, and when its record is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.build_records import StepRecord

WANTED = {"fp32_sha256": "abc", "version": 2}


def test_current_needs_a_matching_record_and_whole_outputs(tmp_path):
    step, out = StepRecord(tmp_path / "step.json", WANTED), tmp_path / "out.bin"
    assert step.current() is None  # no record
    step.path.write_text(json.dumps(WANTED | {"version": 1}))
    assert step.current() is None  # made from other inputs
    step.path.write_text(json.dumps(WANTED | {"summary": 7}))
    assert step.current() == WANTED | {"summary": 7}
    assert step.current(out, whole=Path.is_file) is None  # output missing
    out.write_bytes(b"x")
    assert step.current(out, whole=Path.is_file)["summary"] == 7


def test_redo_removes_the_record_first_and_writes_it_last(tmp_path):
    step = StepRecord(tmp_path / "step.json", WANTED)
    step.path.write_text(json.dumps({"stale": True}))
    with step.redo() as record:
        assert not step.path.exists()
        record["summary"] = {"nodes": 3}
    assert json.loads(step.path.read_text()) == WANTED | {"summary": {"nodes": 3}}
    assert step.current() is not None


def test_a_failed_step_leaves_no_record(tmp_path):
    step = StepRecord(tmp_path / "step.json", WANTED)
    step.path.write_text(json.dumps(WANTED))
    with pytest.raises(RuntimeError), step.redo():
        raise RuntimeError("interrupted")
    assert not step.path.exists()
