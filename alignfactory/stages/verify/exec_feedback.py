"""exec_feedback: keep code that runs correctly, judged by tests the solutions agree on (CodeT-style).

For each code instruction the model writes K candidate solutions (one function `entry_point`, in a
```python block) and, in a second prompt, test cases as assert lines. The tests become two kinds of
sandbox case (code_utils.parse_tests): `assert f(<literals>) == <literal>` and the like become
function-call cases whose expected value stays in the harness (the program cannot speak for them);
other asserts that call `entry_point` stay assert-style (the program's own word: static red flags make
them SUSPICIOUS, which counts as not passed). Every solution runs against every test (one call Job
and one assert Job per solution) -> a K x T pass matrix over both kinds. Generated tests may be
wrong, so they are scored by dual agreement: solutions are grouped by the exact set of tests they
pass, a group scores |solutions| x |tests passed|, and the best group's tests are the trusted ones.
Reference tests from the seed line (`tests: [{"args", "kwargs"?, "expected"}]`) are ground truth:
always trusted, and a group must pass all of them to be picked. With `include_reference`, the seed
line's `solution` joins the K candidates (last): a row whose seed carries a correct solution always
has a group that passes the reference tests.

    row in:  messages [..., user]  (+ seed line fields entry_point, tests, solution; else entry_point
             is read from the instruction's first `name(` in backticks, else "solution")
    row out: messages [..., user, assistant = the best solution's code]
             pairs [{"chosen": passing code, "rejected": failing code, "stage", "chosen_score",
                     "rejected_score"}]  scores = fraction of trusted tests passed
             meta.exec_feedback = {entry_point, tests [{kind, call|code, expected, source}],
                     test_kinds {reference, call, assert} (model-written ones by kind), candidates,
                     pass_matrix (K x T, None = SANDBOX_ERROR row), statuses, trusted, groups,
                     chosen, scores, solutions_raw, tests_raw, sandbox_errors}
    rejects: no_tests | sandbox_error | no_passing_solution | too_few_trusted_tests: n < m

An unparseable solution counts as failing every test (status UNPARSEABLE, raw text kept). A
SANDBOX_ERROR verdict is the infrastructure's fault: that solution is left out of scoring and pairs.

Completeness (after the on_truncated retry at twice the budget): a solution reply that did not end by
itself is not run (status TRUNCATED, its matrix row None): it is neither chosen, nor paired, nor part
of the agreement; a cut tests reply loses its last line (a cut `assert f(1) == 12` could read as a
wrong test). The chosen solution carries its finish reason on the assistant turn ("input" for the
seed's reference solution), pairs carry chosen_finish_reason / rejected_finish_reason;
meta.exec_feedback.finish_reasons (per candidate) and tests_finish_reason record them.
"""

from __future__ import annotations

import re

from pydantic import Field

from alignfactory import records
from alignfactory.stages.assemble.filter import incomplete_reason
from alignfactory.stages.base import RUBRICS, render
from alignfactory.stages.verify import code_utils as cu

UNPARSEABLE = "UNPARSEABLE"
TRUNCATED = "TRUNCATED"


class ExecFeedback(cu.SandboxStage):
    class Params(cu.SandboxParams):
        k: int = Field(4, ge=1)  # candidate solutions per instruction
        max_tests: int = Field(8, ge=0)  # generated tests kept (reference tests come on top)
        min_trusted_tests: int = Field(1, ge=1)
        max_pairs: int = Field(8, ge=0)
        max_tokens: int | None = Field(None, ge=1)  # overrides sampling.max_tokens for both prompts
        temperature: float | None = Field(None, ge=0)  # for solutions (tests use the spec's sampling)
        # the seed line's `solution` as one more candidate (after the model's K)
        include_reference: bool = False
        solution_template: str = "prompts/code_solution.jinja"
        tests_template: str = "prompts/code_tests.jinja"

    requires = {"messages": "a conversation whose last user turn asks for a Python function"}
    adds = ("messages", "pairs", "meta.exec_feedback")

    @classmethod
    def template_files(cls, params):
        return [RUBRICS / params.solution_template, RUBRICS / params.tests_template]

    # ---- one batch: 2 engine calls, 1 sandbox call --------------------------------------------

    def __call__(self, rows: list[dict]) -> list[dict]:
        p = self.params
        tasks = [self.task(r) for r in rows]  # (instruction, entry_point, reference tests)
        sol_sampling = cu.sampling_with(
            self.ctx.sampling, n=p.k, max_tokens=p.max_tokens, temperature=p.temperature
        )
        test_sampling = cu.sampling_with(self.ctx.sampling, n=1, max_tokens=p.max_tokens)
        sol_convs = [self.conversation(p.solution_template, t) for t in tasks]
        test_convs = [self.conversation(p.tests_template, t) for t in tasks]
        sols = self.complete(sol_convs, rows, sol_sampling, what="solutions")
        tests = self.complete(test_convs, rows, test_sampling, what="tests")

        plans = [self.plan(t, s, tt) for t, s, tt in zip(tasks, sols, tests, strict=True)]
        verdicts = self.run_groups([list(plan["jobs"].values()) for plan in plans])
        for plan, vs in zip(plans, verdicts, strict=True):
            plan["verdicts"] = dict(zip(plan["jobs"], vs, strict=True))
        return [self.finish(row, plan) for row, plan in zip(rows, plans, strict=True)]

    def task(self, row: dict) -> dict:
        instruction = records.instruction(row)
        seed = cu.seed_fields(row, ("entry_point", "tests", "solution"))
        entry = seed.get("entry_point") or _entry_from_text(instruction) or "solution"
        ref = [
            {
                "kind": "call",
                "args": _as_args(t.get("args", [])),
                "kwargs": dict(t.get("kwargs") or {}),
                "expected": t["expected"],
                "source": "reference",
            }
            for t in seed.get("tests") or []
            if "expected" in t
        ]
        solution = seed.get("solution") if self.params.include_reference else None
        return {
            "instruction": instruction,
            "entry_point": entry,
            "reference": ref,
            "solution": solution if isinstance(solution, str) and solution.strip() else None,
        }

    def conversation(self, template: str, task: dict) -> list[dict]:
        values = {"instruction": task["instruction"], "entry_point": task["entry_point"]}
        text = render(template, **values, n_tests=self.params.max_tests)
        return [{"role": "user", "content": text}]

    def plan(self, task: dict, sols, tests_out) -> dict:
        """Parse the model's texts (the solutions' and the tests' Completions) into tests (reference
        first) and, per parseable whole solution, one call Job (the call cases) and one assert Job
        (the assert cases); jobs are keyed (solution, kind). A cut solution gets no code (TRUNCATED);
        a cut tests reply is read up to its last line break."""
        from sandbox import Case, Job

        solution_texts, tests_text = sols.texts, tests_out.texts[0]
        tests_reason = tests_out.finish_reason(0)
        if incomplete_reason(tests_reason):
            tests_text = tests_text[: max(tests_text.rfind("\n"), 0)]
        entry = task["entry_point"]
        tests = list(task["reference"])
        seen = {cu.case_key(t) for t in tests}
        generated = [t for t in cu.parse_tests(tests_text, entry) if cu.case_key(t) not in seen]
        tests += [t | {"source": "model"} for t in generated[: self.params.max_tests]]
        raw = list(solution_texts)
        if task["solution"]:
            raw.append(f"```python\n{task['solution'].strip()}\n```")
        reasons = [sols.finish_reason(k) for k in range(len(solution_texts))]
        reasons += [records.FROM_INPUT] * (len(raw) - len(solution_texts))  # the seed's solution
        codes = [
            None if incomplete_reason(r) else cu.pick_function(t, entry)
            for t, r in zip(raw, reasons, strict=True)
        ]
        call = [
            Case(args=t["args"], kwargs=t["kwargs"], expected=t["expected"])
            for t in tests
            if t["kind"] == "call"
        ]
        asserts = [Case(code=t["code"]) for t in tests if t["kind"] == "assert"]
        jobs = {}
        for i, code in enumerate(codes):
            if code and call:
                jobs[(i, "call")] = Job(code=code, kind="call", entry_point=entry, tests=call)
            if code and asserts:
                jobs[(i, "assert")] = Job(code=code, kind="assert", tests=asserts)
        return {
            "task": task,
            "tests": tests,
            "codes": codes,
            "raw": raw,
            "candidates": ["model"] * len(solution_texts) + ["reference"] * (len(raw) - len(solution_texts)),
            "finish_reasons": reasons,
            "tests_raw": tests_out.texts[0],
            "tests_finish_reason": tests_reason,
            "jobs": jobs,
        }

    # ---- scoring one row ------------------------------------------------------------------------

    def finish(self, row: dict, plan: dict) -> dict:
        tests, codes, verdicts = plan["tests"], plan["codes"], plan.get("verdicts", {})
        reasons = plan["finish_reasons"]
        # column j of the matrix is case `at[j]` of solution i's Job of kind tests[j]["kind"]
        at, seen_kind = [], {"call": 0, "assert": 0}
        for t in tests:
            at.append(seen_kind[t["kind"]])
            seen_kind[t["kind"]] += 1
        matrix, statuses, details = [], [], []
        for i, code in enumerate(codes):  # K x T; None = SANDBOX_ERROR (not the candidate's fault)
            vs = {kind: verdicts[(i, kind)] for kind in ("call", "assert") if (i, kind) in verdicts}
            status = TRUNCATED if incomplete_reason(reasons[i]) else _status(code, list(vs.values()))
            statuses.append(status)
            details.append("; ".join(f"{k}: {v.detail}" for k, v in vs.items()) or None)
            vector = [
                bool(t["kind"] in vs and j < len(vs[t["kind"]].cases) and vs[t["kind"]].pass_vector[j])
                for t, j in zip(tests, at, strict=True)
            ]
            matrix.append(None if status in ("SANDBOX_ERROR", TRUNCATED) else vector)
        reference = [t["source"] == "reference" for t in tests]
        c = consensus(matrix, reference)
        meta = self.meta(row)
        meta.update(
            model=self.model_id,
            entry_point=plan["task"]["entry_point"],
            tests=[_test_meta(plan["task"]["entry_point"], t) for t in tests],
            test_kinds={
                "reference": sum(t["source"] == "reference" for t in tests),
                "call": sum(t["source"] == "model" and t["kind"] == "call" for t in tests),
                "assert": sum(t["kind"] == "assert" for t in tests),
            },
            candidates=plan["candidates"],
            finish_reasons=reasons,
            pass_matrix=matrix,
            statuses=statuses,
            details=details,
            sandbox_errors=[i for i, s in enumerate(statuses) if s == "SANDBOX_ERROR"],
            groups=c["groups"],
            trusted=c["trusted"],
            chosen=None,
            scores=None,
            solutions_raw=plan["raw"],
            tests_raw=plan["tests_raw"],
            tests_finish_reason=plan["tests_finish_reason"],
        )
        if not tests:
            return self.reject(row, "no_tests", raw=plan["tests_raw"])
        parsed = [i for i, code in enumerate(codes) if code]
        if parsed and all(matrix[i] is None for i in parsed):  # nothing judged: not the model's fault
            return self.reject(row, "sandbox_error")
        if not c["trusted"]:
            cuts = [incomplete_reason(r) for r in reasons if incomplete_reason(r)]
            if cuts and len(cuts) == len(reasons):  # no whole solution to run
                return self.reject(row, cuts[0].replace(": ", ": solutions ", 1))
            return self.reject(row, "no_passing_solution")
        if len(c["trusted"]) < self.params.min_trusted_tests:
            return self.reject(
                row, f"too_few_trusted_tests: {len(c['trusted'])} < {self.params.min_trusted_tests}"
            )

        trusted = c["trusted"]
        scores = [None if m is None else sum(m[j] for j in trusted) / len(trusted) for m in matrix]
        texts = [
            f"```python\n{code}\n```" if code else raw for code, raw in zip(codes, plan["raw"], strict=True)
        ]
        best = c["groups"][c["best"]]["solutions"]
        passing = best + [i for i, s in enumerate(scores) if s == 1.0 and i not in best]
        failing = [i for i, s in enumerate(scores) if s is not None and s < 1.0]
        meta.update(chosen=passing[0], scores=scores)
        chosen = records.with_response(row, texts[passing[0]], reasons[passing[0]])
        out = records.derive(row, self.ctx.name, chosen, meta)
        out["pairs"] = cu.preference_pairs(
            texts, scores, passing, failing, self.ctx.name, self.params.max_pairs, reasons
        )
        return out


def consensus(matrix: list[list[bool] | None], reference: list[bool]) -> dict:
    """Dual agreement over a K x T pass matrix (None rows are left out).

    groups: solutions with the same pass set, best first: score = |solutions| x |tests passed|, ties
    -> more tests, then the earlier solution. A group is eligible to be trusted if it passes every
    reference test and at least one test. Returns {"groups": [...], "best": index | None, "trusted": [...]}.
    """
    by_set: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(matrix):
        if row is not None:
            by_set.setdefault(tuple(j for j, ok in enumerate(row) if ok), []).append(i)
    groups = [{"solutions": s, "tests": list(t), "score": len(s) * len(t)} for t, s in by_set.items()]
    groups.sort(key=lambda g: (-g["score"], -len(g["tests"]), g["solutions"][0]))
    must = {j for j, is_ref in enumerate(reference) if is_ref}
    best = next((i for i, g in enumerate(groups) if g["tests"] and must <= set(g["tests"])), None)
    return {"groups": groups, "best": best, "trusted": groups[best]["tests"] if best is not None else []}


def _entry_from_text(text: str) -> str | None:
    m = re.search(r"`([A-Za-z_]\w*)\s*\(", text) or re.search(r"\bdef\s+([A-Za-z_]\w*)\s*\(", text)
    return m.group(1) if m else None


def _as_args(args) -> list:
    return list(args) if isinstance(args, (list, tuple)) else [args]  # a lone value is one argument


def _status(code: str | None, verdicts: list) -> str:
    """One status per solution over its call and assert Jobs: the first that is not PASS."""
    if code is None:
        return UNPARSEABLE
    if not verdicts:
        return "NOT_RUN"
    statuses = [v.status.value for v in verdicts]
    if "SANDBOX_ERROR" in statuses:
        return "SANDBOX_ERROR"
    return next((s for s in statuses if s != "PASS"), "PASS")


def _test_meta(entry: str, t: dict) -> dict:
    if t["kind"] == "assert":
        return {"kind": "assert", "code": t["code"], "source": t["source"]}
    call = cu.call_text(entry, t["args"], t["kwargs"])
    return {"kind": "call", "call": call, "expected": repr(t["expected"]), "source": t["source"]}
