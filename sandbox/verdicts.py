"""Statuses and results. Computed in the harness, outside the sandbox."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(str, enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"  # ran and gave a wrong answer, or exited before its tests ran
    ERROR = "ERROR"  # raised, crashed, or exited non-zero
    TLE = "TLE"  # wall clock or CPU limit
    MLE = "MLE"  # address-space limit (MemoryError or a kill under it)
    OLE = "OLE"  # stdout/stderr/return values over their caps
    SUSPICIOUS = "SUSPICIOUS"  # assert-style tests passed, but the code tampers with the checking
    SANDBOX_ERROR = "SANDBOX_ERROR"  # infrastructure failed after retries: never the candidate's fault

    def __str__(self) -> str:
        return self.value


# Order used to pick a job status from its executions: the first one present wins.
RESOURCE_ORDER = (Status.TLE, Status.MLE, Status.OLE)


@dataclass
class CaseResult:
    status: Status
    actual: Any = None  # call: decoded return value; stdio: captured stdout; assert: None
    error: str | None = None  # exception "Type: message" or why the case has no result
    time_s: float | None = None  # call/assert: time inside the case; stdio: wall time of its execution

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status.value
        d["actual"] = repr(self.actual) if self.actual is not None else None
        return d


@dataclass
class Verdict:
    status: Status
    cases: list[CaseResult] = field(default_factory=list)
    stdout: str = ""  # call/assert: what the program printed (capped); stdio: stdout of the first case
    stderr: str = ""
    detail: str = ""  # one line for humans: why this status
    flags: list[str] = field(default_factory=list)  # static-check findings (see static_checks.py)
    time_s: float = 0.0  # wall time of all executions of the job
    attempts: int = 1  # executions of the job, > 1 after SANDBOX_ERROR retries
    job_id: str | None = None

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    @property
    def pass_vector(self) -> list[bool]:
        """One bool per test case, in order: a row of a pass matrix."""
        return [c.status is Status.PASS for c in self.cases]

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "cases": [c.to_dict() for c in self.cases],
            "stdout": self.stdout,
            "stderr": self.stderr,
            "detail": self.detail,
            "flags": list(self.flags),
            "time_s": self.time_s,
            "attempts": self.attempts,
            "job_id": self.job_id,
        }
