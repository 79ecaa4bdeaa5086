"""Decode values framed by the sandbox, and compare them with expected values with strict types.

Rules: bool, int, float, str, None, bytes, complex must match in type exactly (True != 1, 1 != 1.0);
list and tuple are both "sequences" (test data from JSON has no tuples); dict keys and set elements
compare with the same strict rules; any other object came back as an Opaque and equals nothing, so an
object with a constant `__eq__` can never pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sandbox import forkserver


@dataclass(frozen=True)
class Opaque:
    """A value the sandbox could not frame as data: only its type name and repr cross the boundary."""

    type_name: str
    repr: str

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


def decode(v: Any) -> Any:
    """Framed value from the sandbox -> Python value; $object values become Opaque."""
    return forkserver.decode(v, Opaque)


def canon(x: Any) -> Any:
    """A hashable form that keeps types apart: canon(1) != canon(True) != canon(1.0)."""
    t = type(x)
    if t in (list, tuple):
        return ("seq", tuple(canon(e) for e in x))
    if t is dict:
        return ("dict", frozenset((canon(k), canon(e)) for k, e in x.items()))
    if t in (set, frozenset):
        return ("set", frozenset(canon(e) for e in x))
    if t is float and math.isnan(x):
        return ("float", "nan")
    if t is Opaque:
        return ("opaque", id(x))
    return (t.__name__, x)


def strict_equal(actual: Any, expected: Any, float_tol: float = 0.0) -> bool:
    ta, te = type(actual), type(expected)
    if ta is Opaque or te is Opaque:
        return False
    if te in (list, tuple):
        return (
            ta in (list, tuple)
            and len(actual) == len(expected)
            and all(strict_equal(a, e, float_tol) for a, e in zip(actual, expected, strict=False))
        )
    if te is dict:
        if ta is not dict or len(actual) != len(expected):
            return False
        by_key = {canon(k): v for k, v in actual.items()}
        return all(
            canon(k) in by_key and strict_equal(by_key[canon(k)], v, float_tol) for k, v in expected.items()
        )
    if te in (set, frozenset):
        return ta in (set, frozenset) and canon(actual) == canon(expected)
    if te is float:
        if ta is not float:
            return False
        if math.isnan(expected):
            return math.isnan(actual)
        return actual == expected or (
            float_tol > 0 and math.isclose(actual, expected, rel_tol=float_tol, abs_tol=float_tol)
        )
    return ta is te and actual == expected


def normalize_stdout(text: str, policy: str) -> Any:
    """exact: unchanged; strip_trailing: trailing spaces per line and trailing blank lines removed;
    tokens: whitespace-separated tokens."""
    if policy == "exact":
        return text
    if policy == "tokens":
        return text.split()
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def stdout_matches(actual: str, expected: str, policy: str) -> bool:
    return normalize_stdout(actual, policy) == normalize_stdout(expected, policy)
