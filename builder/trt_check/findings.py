"""What a check found, per graph."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from builder.trt_check.support import SOURCE, TARGET_TENSORRT


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" (the parser or fusion fails) | "warning" (imports, but not as intended)
    rule: str  # domain | opset | unsupported-op | dtype | attribute | qdq
    node: str
    op: str
    message: str

    def line(self) -> str:
        return f"{self.severity} [{self.rule}] node '{self.node}' ({self.op}): {self.message}"


@dataclass
class CheckReport:
    graph: str
    target: str = TARGET_TENSORRT
    nodes: int = 0
    op_counts: Counter = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {
            "graph": self.graph,
            "target_tensorrt": self.target,
            "support_list": SOURCE,
            "passed": self.passed,
            "nodes": self.nodes,
            "op_counts": dict(sorted(self.op_counts.items())),
            "findings": [f.__dict__ for f in self.findings],
        }
