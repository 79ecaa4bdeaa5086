"""Helpers shared by the stages that run model-written code (exec_feedback, autoif).

code_blocks(text)             -> ["def f(x): ...", ...]    fenced blocks, else the text if it parses
pick_function(text, name)     -> "def name(...): ..." | None
parse_tests(text, name)       -> [{"kind": "call", args, kwargs, expected} | {"kind": "assert", code}]
seed_fields(row, keys)        -> {key: value}             extra fields of the seed line (entry_point, tests, ...)
first_of_each(items, key)     -> items, the first of each key kept
preference_pairs(...)         -> [{"chosen", "rejected", "stage", "chosen_score", "rejected_score",
                                  "chosen_finish_reason", "rejected_finish_reason"}, ...]
SandboxParams / open_sandbox  -> the sandbox params every code stage takes, and the Sandbox they build
SandboxStage.run_groups       -> one sandbox.run for a batch's jobs, verdicts handed back per group
"""

from __future__ import annotations

import ast
import json
import re

from pydantic import BaseModel, Field, field_validator

from alignfactory.stages.base import LLMParams, LLMStage

FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)  # an unclosed last fence counts


def code_blocks(text: str) -> list[str]:
    """Python code blocks of a model reply, in order. Unfenced text counts if it parses as Python."""
    blocks = [body for lang, body in FENCE.findall(text) if lang.lower() in ("", "python", "py", "python3")]
    blocks = [b.strip("\n") for b in blocks if b.strip()]
    if not blocks and _parses(text.strip()):
        blocks = [text.strip()]
    return blocks


def pick_function(text: str, name: str) -> str | None:
    """The first code block that defines `name` (else a block defining any function); None if none.

    A block that does not parse is still returned when it defines `name`: the sandbox reports its
    SyntaxError as the candidate's ERROR, which is the truth about that candidate.
    """
    blocks = code_blocks(text)
    defines = re.compile(rf"^\s*def\s+{re.escape(name)}\s*\(", re.M)
    for b in blocks:
        if defines.search(b):
            return b
    any_def = next((b for b in blocks if re.search(r"^\s*def\s+\w+\s*\(", b, re.M)), None)
    return any_def or _def_region(text, name)


def _def_region(text: str, name: str) -> str | None:
    """Broken fences: the `def name(` line (else any top-level def) and the indented lines after it,
    with the import lines before it."""
    lines = text.replace("\r", "").split("\n")
    starts = [i for i, ln in enumerate(lines) if re.match(rf"def\s+{re.escape(name)}\s*\(", ln)]
    starts = starts or [i for i, ln in enumerate(lines) if re.match(r"def\s+\w+\s*\(", ln)]
    if not starts:
        return None
    end = starts[0] + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][:1] in (" ", "\t")):
        end += 1
    imports = [ln for ln in lines[: starts[0]] if re.match(r"(import|from)\s+\w", ln)]
    return "\n".join(imports + lines[starts[0] : end]).rstrip()


def _parses(src: str) -> bool:
    try:
        ast.parse(src)
    except (SyntaxError, ValueError):
        return False
    return bool(src)


# ---- tests written by the model -----------------------------------------------------------------


def parse_tests(text: str, name: str) -> list[dict]:
    """Tests of `name` from whatever the model wrote, in order, each of one of two kinds:

        {"kind": "call", "args": [...], "kwargs": {...}, "expected": value}   judged outside the sandbox
        {"kind": "assert", "code": "assert ..."}                               the program's own word

    A line converts to a call case when it is `assert name(<literals>) == <literal>` (either side),
    `assert name(<literals>) is True|False|None`, the same comparison without `assert`, or a JSON
    `[{"args": [...], "kwargs"?: {...}, "expected": ...}]` anywhere in the text. Literals are what
    ast.literal_eval reads (negative numbers, nested tuples, sets, dicts, bytes); a test that computes
    its arguments or answer would run our code outside the sandbox, so it does not convert. Converted
    cases are compared with the sandbox's strict types (2 != 2.0, 1 != True; list == tuple).
    Any other one-line `assert` that calls `name` stays assert-style (`assert not f(1)`, `assert f(x)
    == y`, `assert abs(f(0.1) - 0.3) < 1e-9`, `assert f(1) == [i for i in ...]`). Duplicates (same
    arguments, same assert text) keep the first.
    """
    found: list[dict] = []
    for line in text.replace("\r", "").split("\n"):
        line = line.strip().strip("`").strip()
        if line.startswith(">>>"):
            line = line[3:].strip()
        test = _line_test(line, name)
        if test is not None:
            found.append(test)
    found += _json_cases(text)
    return first_of_each(found, key=case_key)


def case_key(test: dict) -> str:
    """Two tests with the same key are the same test: a call's arguments, or an assert's text."""
    if test["kind"] == "call":
        return repr(("call", list(test["args"]), sorted(test["kwargs"].items())))
    return repr(("assert", test["code"]))


def call_text(name: str, args, kwargs: dict) -> str:
    return f"{name}({', '.join([repr(a) for a in args] + [f'{k}={v!r}' for k, v in kwargs.items()])})"


def _line_test(line: str, name: str) -> dict | None:
    if not line or name not in line:
        return None
    try:
        body = ast.parse(line).body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if len(body) != 1:
        return None
    node = body[0]
    if isinstance(node, ast.Assert):
        case = _call_case(node.test, name)
        if case is None and any(_is_call(n, name, literal=False) for n in ast.walk(node.test)):
            return {"kind": "assert", "code": line}
        return case
    if isinstance(node, ast.Expr):  # `f(1) == 2` written without `assert`
        return _call_case(node.value, name)
    return None


def _call_case(expr, name: str) -> dict | None:
    """`name(<literals>) == <literal>` (either side) or `name(<literals>) is True|False|None` -> a call case."""
    if not isinstance(expr, ast.Compare) or len(expr.ops) != 1:
        return None
    op, left, right = expr.ops[0], expr.left, expr.comparators[0]
    if isinstance(op, ast.Eq) and not _is_call(left, name) and _is_call(right, name):
        left, right = right, left
    if not _is_call(left, name):
        return None
    if isinstance(op, ast.Is):
        if not (isinstance(right, ast.Constant) and any(right.value is c for c in (True, False, None))):
            return None  # `is` on anything else asks about identity, which a value cannot carry
    elif not isinstance(op, ast.Eq):
        return None
    try:
        args = [ast.literal_eval(a) for a in left.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in left.keywords}
        expected = ast.literal_eval(right)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return {"kind": "call", "args": args, "kwargs": kwargs, "expected": expected}


def first_of_each(items: list, key) -> list:
    """`items` in order, keeping only the first of those with the same key(item)."""
    out, seen = [], set()
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def preference_pairs(texts, scores, chosen, rejected, stage: str, max_pairs: int, reasons=None) -> list[dict]:
    """(chosen, rejected) pairs in `chosen` order, at most max_pairs; identical texts and repeated
    pairs are skipped. `reasons[i]` is text i's finish reason ("stop", "input", ...): each side's
    goes into the pair as chosen_finish_reason / rejected_finish_reason (None when not given, which
    export counts as incomplete)."""
    pairs, seen = [], set()
    reasons = reasons if reasons is not None else [None] * len(texts)
    for i in chosen:
        for j in rejected:
            if texts[i] != texts[j] and (texts[i], texts[j]) not in seen and len(pairs) < max_pairs:
                seen.add((texts[i], texts[j]))
                pairs.append(
                    {
                        "chosen": texts[i],
                        "rejected": texts[j],
                        "stage": stage,
                        "chosen_score": scores[i],
                        "rejected_score": scores[j],
                        "chosen_finish_reason": reasons[i],
                        "rejected_finish_reason": reasons[j],
                    }
                )
    return pairs


def _is_call(expr, name: str, literal: bool = True) -> bool:
    """A call of `name` itself; with `literal`, one whose arguments could all be literals
    (no *args, no **kwargs)."""
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == name):
        return False
    return not literal or (
        all(k.arg is not None for k in expr.keywords)
        and not any(isinstance(a, ast.Starred) for a in expr.args)
    )


def _json_cases(text: str) -> list[dict]:
    out = []
    for item in json_values(text):
        for case in item if isinstance(item, list) else [item]:
            if (
                isinstance(case, dict)
                and "expected" in case
                and isinstance(case.get("args", []), list)
                and isinstance(case.get("kwargs", {}), dict)
            ):
                kwargs = case.get("kwargs", {})
                out.append(
                    {
                        "kind": "call",
                        "args": case.get("args", []),
                        "kwargs": kwargs,
                        "expected": case["expected"],
                    }
                )
    return out


def json_values(text: str) -> list:
    """Every top-level JSON array or object that decodes somewhere in the text (fences or prose around it)."""
    dec, out, i = json.JSONDecoder(), [], 0
    while True:
        starts = [j for j in (text.find("[", i), text.find("{", i)) if j >= 0]
        if not starts:
            return out
        j = min(starts)
        try:
            value, end = dec.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        out.append(value)
        i = end


def jsonable(value) -> bool:
    """True if the value survives a JSON round trip unchanged in type (what a row may carry)."""
    try:
        return json.loads(json.dumps(value)) == value and type(json.loads(json.dumps(value))) is type(value)
    except (TypeError, ValueError):
        return False


# ---- extra fields of a seed line ----------------------------------------------------------------


def seed_fields(row: dict, keys: tuple[str, ...]) -> dict:
    """Values of `keys` for this row: from the row itself, else from row["seed"] (the input line's
    extra fields, kept by the reader)."""
    found = {k: row[k] for k in keys if k in row}
    return found | {k: v for k, v in (row.get("seed") or {}).items() if k in keys and k not in found}


# ---- sandbox and engine plumbing ------------------------------------------------------------------


class SandboxParams(LLMParams):  # the code stages are LLM stages: on_truncated too
    limits: dict = {"wall_s": 4.0, "memory_mb": 512}  # sandbox.Limits fields, per execution
    workers: int = Field(2, ge=1)  # fork-server workers (one uid and one bwrap each)
    allow_unsafe: bool = False  # True runs model code without isolation if bwrap is missing: never in CI

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: dict) -> dict:
        from sandbox.limits import Limits

        try:
            Limits(**v)
        except TypeError as e:
            raise ValueError(f"not a sandbox.Limits field: {e}") from None
        return v


def open_sandbox(p: SandboxParams):
    """A Sandbox for the stage's lifetime. Fails closed (SandboxUnavailable) unless allow_unsafe."""
    from sandbox import Limits, Sandbox

    return Sandbox(Limits(**p.limits), workers=p.workers, allow_unsafe=p.allow_unsafe)


def sampling_with(sampling, **override):
    """A copy of a Sampling with the non-None overrides applied."""
    import dataclasses

    return dataclasses.replace(sampling, **{k: v for k, v in override.items() if v is not None})


class SandboxStage(LLMStage):
    """An LLM stage that also runs model-written code: holds a sandbox.Sandbox for its lifetime."""

    def __init__(self, params: BaseModel, ctx, engine=None, sandbox=None):
        super().__init__(params, ctx, engine)
        self.owns_sandbox = sandbox is None  # a sandbox handed in (tests) is its giver's to close
        self.sandbox = sandbox if sandbox is not None else open_sandbox(params)

    def run_groups(self, groups: list[list]) -> list[list]:
        """All jobs of a batch (a list of jobs per row) in one sandbox.run; verdicts in the same shape."""
        flat = [job for jobs in groups for job in jobs]
        verdicts = iter(self.sandbox.run(flat) if flat else ())
        return [[next(verdicts) for _ in jobs] for jobs in groups]

    def close(self) -> None:
        sb, self.sandbox = getattr(self, "sandbox", None), None
        if sb is not None and self.owns_sandbox:
            sb.close()

    def __del__(self):
        try:  # noqa: SIM105 (plain try: at interpreter exit, imported helpers may be gone)
            self.close()
        except Exception:
            pass
