"""What an experiment hands the report: checks (theory vs simulation) and figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Comparison = Literal["abs", "at_least", "at_most"]


@dataclass
class Check:
    """One acceptance check. comparison: 'abs' |sim − theory| ≤ tol; 'at_least' sim ≥ theory − tol;
    'at_most' sim ≤ theory + tol."""

    name: str
    theory: float
    simulation: float
    tolerance: float
    comparison: Comparison = "abs"
    note: str = ""

    @property
    def passed(self) -> bool:
        if not math.isfinite(self.simulation):
            return False
        if self.comparison == "abs":
            return abs(self.simulation - self.theory) <= self.tolerance
        if self.comparison == "at_least":
            return self.simulation >= self.theory - self.tolerance
        return self.simulation <= self.theory + self.tolerance

    @property
    def rule(self) -> str:
        return {
            "abs": "|sim − theory| ≤ tol",
            "at_least": "sim ≥ theory − tol",
            "at_most": "sim ≤ theory + tol",
        }[self.comparison]

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "theory": float(self.theory),
            "simulation": float(self.simulation),
            "tolerance": float(self.tolerance),
            "passed": bool(self.passed),
        }


@dataclass
class Section:
    title: str
    intro: str
    checks: list[Check] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)
    command: str = "tokendyn reproduce --quick"
