"""Code-execution sandbox: run model-written programs against tests, verdicts computed outside.

    from sandbox import Sandbox, Limits, Job, Case, Status
    with Sandbox(Limits(wall_s=2), workers=2) as sb:
        [v] = sb.run([Job(code="def f(x): return x + 1", entry_point="f", tests=[Case(args=[1], expected=2)])])
        v.status is Status.PASS

See harness.py (Sandbox), jobs.py (Job, Case), verdicts.py (Verdict, Status), isolation.py (bwrap).
"""

from sandbox.harness import Sandbox
from sandbox.isolation import Isolation, SandboxUnavailable
from sandbox.jobs import Case, Job
from sandbox.limits import Limits
from sandbox.verdicts import CaseResult, Status, Verdict

__all__ = [
    "Case",
    "CaseResult",
    "Isolation",
    "Job",
    "Limits",
    "Sandbox",
    "SandboxUnavailable",
    "Status",
    "Verdict",
]
