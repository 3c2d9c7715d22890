"""One row of the theory check table (``stopgrad check``): shared by the paper's checks (theorems) and
GSG's (gsg_checks)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CheckResult"]


@dataclass
class CheckResult:
    """One row of the check table: the statement, the measured residual, its tolerance, the verdict."""

    name: str
    statement: str
    residual: float
    tolerance: float
    passed: bool
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
