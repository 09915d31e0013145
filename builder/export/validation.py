"""Every conversion ends in a comparison: per-output max difference against a reference."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class OutputCheck:
    case: str  # e.g. "prefill b1 s16"
    output: str
    max_abs_diff: float
    ref_max_abs: float
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol + self.rtol * self.ref_max_abs


def compare(
    case: str, name: str, reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float
) -> OutputCheck:
    if reference.shape != candidate.shape:
        raise ValueError(f"{case}/{name}: shape {candidate.shape} != reference {reference.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return OutputCheck(case, name, float(diff.max()), float(np.abs(reference).max()), atol, rtol)


@dataclass(frozen=True)
class ValidationReport:
    graph: str
    reference: str
    checks: tuple[OutputCheck, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def lines(self) -> list[str]:
        return [
            f"{c.case:<24} {c.output:<8} max|Δ| {c.max_abs_diff:.2e}  "
            f"(tol {c.atol:.0e} + {c.rtol:.0e}·{c.ref_max_abs:.1f})  {'ok' if c.passed else 'FAIL'}"
            for c in self.checks
        ]

    def save(self, path: Path) -> None:
        payload = {
            "graph": self.graph,
            "reference": self.reference,
            "passed": self.passed,
            "checks": [asdict(c) | {"passed": c.passed} for c in self.checks],
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")
