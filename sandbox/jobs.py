"""What callers hand to the sandbox: a program, its tests, and how to judge them.

Three kinds of test:
  call    the program defines `entry_point`; each case calls it with `args`/`kwargs`. The sandbox
          returns the actual value (or exception); the harness compares it with `expected` outside.
  stdio   each case runs the program as __main__ with `stdin`; stdout is compared outside with
          `expected` under the job's whitespace policy.
  assert  each case is test code (`code`) run after the program in the same namespace; it passes if
          it raises nothing. Weak evidence: static flags turn a PASS into SUSPICIOUS.
Expected values stay in the harness: only args, kwargs, stdin and test code enter the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.limits import Limits

KINDS = ("call", "stdio", "assert")
LANGUAGES = ("python",)  # others are rejected with a clear error until implemented
WHITESPACE = ("strip_trailing", "exact", "tokens")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class Case:
    args: tuple | list = ()  # call: positional arguments (JSON-able values)
    kwargs: dict = field(default_factory=dict)  # call: keyword arguments
    stdin: str = ""  # stdio: text fed on stdin
    code: str = ""  # assert: test code, e.g. "assert add(1, 2) == 3"
    expected: Any = MISSING  # call: return value; stdio: stdout text (MISSING: just run it, no comparison).
    # Never sent to the sandbox.

    @classmethod
    def from_dict(cls, d: dict) -> Case:
        d = dict(d)
        if "output" in d and "expected" not in d:
            d["expected"] = d.pop("output")
        if "input" in d and "stdin" not in d:
            d["stdin"] = d.pop("input")
        return cls(**d)


@dataclass(frozen=True)
class Job:
    code: str
    tests: tuple[Case, ...] | list[Case] = ()
    kind: str = "call"
    language: str = "python"
    entry_point: str | None = None  # call: name of the function to call
    whitespace: str = "strip_trailing"  # stdio: strip_trailing (per line and at end) | exact | tokens
    float_tol: float = 0.0  # call: absolute+relative tolerance for floats; types stay strict either way
    limits: Limits | None = None  # overrides the Sandbox's limits for this job (tmp_mb excepted)
    id: str | None = None  # free-form, copied into the Verdict
    probe: bool = False  # selftest only: ctypes allowed, to probe the kernel layer (seccomp) under the guard

    def validate(self) -> None:
        """Raise ValueError with a message a caller can act on."""
        if self.language not in LANGUAGES:
            raise ValueError(
                f"language {self.language!r} is not supported yet (supported: {', '.join(LANGUAGES)})"
            )
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "call" and not self.entry_point:
            raise ValueError("kind='call' needs entry_point, the name of the function to call")
        if self.whitespace not in WHITESPACE:
            raise ValueError(f"whitespace {self.whitespace!r} is not one of {WHITESPACE}")
        for c in self.tests:
            if not isinstance(c, Case):
                raise ValueError(f"tests must be Case objects (or dicts via Job.from_dict), got {type(c)}")
            if self.kind == "assert" and not c.code:
                raise ValueError("kind='assert' cases need test code in Case.code")
            if self.kind == "call" and c.expected is MISSING:
                raise ValueError("kind='call' cases need Case.expected")

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        d = dict(d)
        d["tests"] = [t if isinstance(t, Case) else Case.from_dict(t) for t in d.get("tests", ())]
        if isinstance(d.get("limits"), dict):
            d["limits"] = Limits(**d["limits"])
        return cls(**d)
