"""exec_feedback on hand-written solutions and tests: scripted engine, real sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignfactory import io as af_io
from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.verify.code_utils import code_blocks, parse_tests, pick_function, seed_fields
from alignfactory.stages.verify.exec_feedback import ExecFeedback, consensus
from tests.unit.scripted import ScriptedEngine

REPO_SEEDS = Path(__file__).resolve().parents[2] / "pipelines" / "seeds" / "code_seed.jsonl"

TASK = "Write a Python function `sum_to(n)` that returns 1 + 2 + ... + n."
CORRECT_A = "```python\ndef sum_to(n):\n    return n * (n + 1) // 2\n```"
CORRECT_B = "Here you go:\n```python\ndef sum_to(n):\n    return sum(range(n + 1))\n```\nIt loops."
OFF_BY_ONE = "```python\ndef sum_to(n):\n    return sum(range(n))\n```"
CRASHING = "```python\ndef sum_to(n):\n    return n.total()\n```"
SLOW = "```python\ndef sum_to(n):\n    while True:\n        pass\n```"
PROSE = "I am sorry, I cannot write code for that."
# t3 is a bad generated test: sum_to(5) is 15, but the off-by-one solution gives 10 and passes it
TESTS = "assert sum_to(3) == 6\nassert sum_to(0) == 0\nassert sum_to(4) == 10\nassert sum_to(5) == 10\n"


@pytest.fixture(scope="module")
def sandbox():
    from sandbox import Limits, Sandbox

    with Sandbox(Limits(wall_s=1.0), workers=2) as sb:
        yield sb


class CountingSandbox:
    """The real sandbox, counting run() calls; jobs whose code holds BOOM come back SANDBOX_ERROR."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def run(self, jobs):
        from sandbox import Status, Verdict

        self.calls.append(len(jobs))
        real = self.real.run([j for j in jobs if "BOOM" not in j.code])[::-1]
        return [
            Verdict(Status.SANDBOX_ERROR, detail="boom") if "BOOM" in j.code else real.pop() for j in jobs
        ]


def make(script, sandbox, **params):
    engine = ScriptedEngine(rule=lambda conv, k, seed: script(conv[-1]["content"], k))
    ctx = StageContext("exec_feedback", 1, seed=3)
    stage = ExecFeedback(ExecFeedback.Params(**params), ctx, engine=engine, sandbox=CountingSandbox(sandbox))
    return stage, engine


def scripted(solutions, tests=TESTS):
    return lambda prompt, k: tests if prompt.startswith("Task:") else solutions[k]


def row(text=TASK, line=1, file="seeds.jsonl"):
    return records.new_row([{"role": "user", "content": text}], {"file": file, "line": line})


# ---- parsing model text ---------------------------------------------------------------------------


def test_code_extraction_from_fences_prose_and_broken_fences():
    assert pick_function(CORRECT_B, "sum_to") == "def sum_to(n):\n    return sum(range(n + 1))"
    assert pick_function(PROSE, "sum_to") is None
    assert code_blocks("def f(x):\n    return x") == ["def f(x):\n    return x"]  # unfenced but valid
    broken = "```\n```python\nimport math\ndef sum_to(n):\n    return n\nprint(sum_to(3))\n```\nDone."
    assert pick_function(broken, "sum_to") == "import math\ndef sum_to(n):\n    return n"
    other = "```python\ndef helper(n):\n    return n\n```"
    assert pick_function(other, "sum_to") == "def helper(n):\n    return n"  # runs, and fails as ERROR


def calls(text, name):
    """The call cases parse_tests finds, as (args, kwargs, expected)."""
    return [(t["args"], t["kwargs"], t["expected"]) for t in parse_tests(text, name) if t["kind"] == "call"]


def asserts(text, name):
    return [t["code"] for t in parse_tests(text, name) if t["kind"] == "assert"]


def test_test_parsing_assert_forms_json_and_junk():
    text = """```python
def is_even(n):
    return n % 2 == 0
assert is_even(2) == True
assert not is_even(3)
assert is_even(4)
assert is_even(2) == False
assert is_even(len("ab")) == True
>>> is_even(7)
assert is_even(
```
[{"args": [10], "expected": true}, {"args": [11]}]"""
    assert calls(text, "is_even") == [([2], {}, True), ([10], {}, True)]
    # truthiness is not `== True` (1 and [0] are truthy): those stay the program's own word
    assert asserts(text, "is_even") == [
        "assert not is_even(3)",
        "assert is_even(4)",
        'assert is_even(len("ab")) == True',
    ]
    assert parse_tests("assert other(1) == 2\nno tests here\nassert True", "is_even") == []
    assert calls("assert f((1, 2)) == {'a': [1]}", "f") == [([(1, 2)], {}, {"a": [1]})]


@pytest.mark.parametrize(
    "line, converted",
    [
        ("assert f(1, 2) == 3", ([1, 2], {}, 3)),
        ("assert 3 == f(1, 2)", ([1, 2], {}, 3)),  # mirrored
        ("f(1, 2) == 3", ([1, 2], {}, 3)),  # no `assert`
        ("assert f(-1, -2.5) == -3.5", ([-1, -2.5], {}, -3.5)),  # negative numbers
        ("assert f(1, b=2) == 3", ([1], {"b": 2}, 3)),  # keyword args
        ("assert f((1, (2, 3))) == ((1,), [2, 3])", ([(1, (2, 3))], {}, ((1,), [2, 3]))),  # nested tuples
        ("assert f({1, 2}) == {2, 1}", ([{1, 2}], {}, {1, 2})),  # sets
        ("assert f(0.1, 0.2) == 0.30000000000000004", ([0.1, 0.2], {}, 0.30000000000000004)),
        ("assert f(b'x') == {'k': None}", ([b"x"], {}, {"k": None})),
        ("assert f(3) is True", ([3], {}, True)),
        ("assert f(3) is None, 'message'", ([3], {}, None)),
        ("assert f() == []", ([], {}, [])),
    ],
)
def test_literal_comparisons_become_call_cases(line, converted):
    assert calls(line, "f") == [converted] and asserts(line, "f") == []


@pytest.mark.parametrize(
    "line",
    [
        "assert f(x) == y",  # names: the values are not in the line
        "assert f(1) == [i for i in range(3)]",  # computed expectation
        "assert abs(f(0.1) - 0.3) < 1e-9",  # float comparison with a tolerance
        "assert math.isclose(f(0.1), 0.3)",
        "assert round(f(2), 2) == 1.41",  # the call is not the compared value
        "assert not f(1)",
        "assert f(1)",  # truthy is not True
        "assert f(1) != 2",
        "assert f(1) is 1",  # identity of an int: not a value the harness can compare
        "assert f(*[1, 2]) == 3",
        "assert f(**{'a': 1}) == 3",
        "assert f(1) == 2 == 2",
        "assert f(10**2) == 100",  # an expression, not a literal
        "assert f(1) < 2",
        "assert sorted(f([3, 1])) == [1, 3]",
    ],
)
def test_other_asserts_stay_assert_style(line):
    assert parse_tests(line, "f") == [{"kind": "assert", "code": line}]


def test_non_tests_and_duplicates_are_dropped():
    text = "f(1)\nprint(f(1))\nx = f(1)\nassert g(1) == 2\nassert f(1) == 2\nassert f(1) == 3\nassert not f(2)\nassert not f(2)"
    assert parse_tests(text, "f") == [
        {"kind": "call", "args": [1], "kwargs": {}, "expected": 2},  # the first expectation for f(1)
        {"kind": "assert", "code": "assert not f(2)"},
    ]
    assert calls('[{"args": [1], "kwargs": {"b": 2}, "expected": 3}]', "f") == [([1], {"b": 2}, 3)]


def test_seed_fields_come_from_the_row_or_the_seed_line(tmp_path):
    seed = tmp_path / "code.jsonl"
    line = {"instruction": TASK, "entry_point": "sum_to", "tests": [{"args": [2], "expected": 3}]}
    seed.write_text("\n" + json.dumps(line) + "\n")
    (seeded,) = af_io.read_inputs([seed])  # the reader keeps extra keys in row["seed"]
    assert seed_fields(seeded, ("entry_point", "tests")) == {
        "entry_point": "sum_to",
        "tests": [{"args": [2], "expected": 3}],
    }
    assert seed_fields(row(), ("entry_point",)) == {}
    r = row()
    r["entry_point"] = "given"
    assert seed_fields(r, ("entry_point",)) == {"entry_point": "given"}


# ---- dual agreement -------------------------------------------------------------------------------


def test_consensus_does_not_trust_a_test_only_a_wrong_solution_passes():
    right, wrong, dead = [True, True, True, False], [False, True, False, True], [False] * 4
    c = consensus([right, right, wrong, dead, None], [False] * 4)
    assert c["trusted"] == [0, 1, 2]
    assert c["groups"][0] == {"solutions": [0, 1], "tests": [0, 1, 2], "score": 6}
    assert c["groups"][1] == {"solutions": [2], "tests": [1, 3], "score": 2}
    assert all(4 not in g["solutions"] for g in c["groups"])  # SANDBOX_ERROR rows left out


def test_reference_tests_overrule_a_wrong_majority():
    # three identical wrong solutions agree on tests 1, 2; the right one passes the reference test 0
    wrong, right = [False, True, True], [True, True, False]
    assert consensus([wrong, wrong, wrong, right], [False] * 3)["trusted"] == [1, 2]
    c = consensus([wrong, wrong, wrong, right], [True, False, False])
    assert c["trusted"] == [0, 1] and c["groups"][c["best"]]["solutions"] == [3]
    assert consensus([wrong, wrong], [True, False, False]) == {
        "groups": [{"solutions": [0, 1], "tests": [1, 2], "score": 4}],
        "best": None,
        "trusted": [],
    }


# ---- the stage, end to end on the sandbox ----------------------------------------------------------


def test_pass_matrix_trusted_tests_best_solution_and_pairs(sandbox):
    sols = [CORRECT_A, CORRECT_B, OFF_BY_ONE, CRASHING, SLOW, PROSE]
    stage, engine = make(scripted(sols), sandbox, k=6)
    (out,) = stage([row()])
    meta = out["meta"]["exec_feedback"]
    assert out["reject"] is None and out["lineage"]["stage"] == "exec_feedback"
    assert meta["pass_matrix"] == [
        [True, True, True, False],
        [True, True, True, False],
        [False, True, False, True],  # off by one: passes sum_to(0) and the bad test
        [False] * 4,
        [False] * 4,
        [False] * 4,
    ]
    assert meta["statuses"] == ["FAIL", "FAIL", "FAIL", "ERROR", "TLE", "UNPARSEABLE"]
    assert meta["trusted"] == [0, 1, 2] and meta["chosen"] == 0
    assert meta["scores"] == [1.0, 1.0, 1 / 3, 0.0, 0.0, 0.0]
    assert [t["call"] for t in meta["tests"]] == ["sum_to(3)", "sum_to(0)", "sum_to(4)", "sum_to(5)"]
    assert meta["solutions_raw"] == sols and meta["tests_raw"] == TESTS
    assert out["messages"][-1] == records.assistant(CORRECT_A, "stop")
    assert out["messages"][:-1] == row()["messages"]

    pairs = out["pairs"]
    assert len(pairs) == 8  # 2 passing x 4 failing
    assert {p["chosen"] for p in pairs} == {
        CORRECT_A,
        "```python\n" + pick_function(CORRECT_B, "sum_to") + "\n```",
    }
    assert pairs[0] == {
        "chosen": CORRECT_A,
        "rejected": OFF_BY_ONE,
        "stage": "exec_feedback",
        "chosen_score": 1.0,
        "rejected_score": 1 / 3,
        "chosen_finish_reason": "stop",
        "rejected_finish_reason": "stop",
    }
    assert pairs[3]["rejected"] == PROSE  # unparseable: the raw text is the rejected side
    assert stage.sandbox.calls == [5]  # one sandbox call, one job per parseable solution
    json.dumps(out)  # the row stays JSON


def test_requests_use_distinct_seeds_and_the_stage_sampling(sandbox):
    stage, engine = make(scripted([CORRECT_A] * 3), sandbox, k=3, max_tokens=40)
    stage([row(), row("Write `sum_to(n)` again.")])
    sol_call, test_call = engine.calls
    assert sol_call["sampling"].n == 3 and test_call["sampling"].n == 1
    assert sol_call["sampling"].max_tokens == test_call["sampling"].max_tokens == 40
    assert len(set(sol_call["seeds"] + test_call["seeds"])) == 4
    assert "`sum_to`" in sol_call["conversations"][0][0]["content"]
    assert stage.tokens_out > 0


def test_a_whole_batch_goes_to_the_sandbox_in_one_call(sandbox):
    stage, _ = make(scripted([CORRECT_A, OFF_BY_ONE]), sandbox, k=2)
    outs = stage([row(), row(TASK + " Be quick."), row(TASK + " Be neat.")])
    assert stage.sandbox.calls == [6]
    assert [o["meta"]["exec_feedback"]["chosen"] for o in outs] == [0, 0, 0]


def test_reference_tests_from_the_seed_line_are_always_trusted(sandbox, tmp_path):
    seed = tmp_path / "code.jsonl"
    ref = {"instruction": TASK, "entry_point": "sum_to", "tests": [{"args": [3], "expected": 6}]}
    seed.write_text(json.dumps(ref) + "\n")
    wrong_tests = "assert sum_to(5) == 10\nassert sum_to(0) == 0\n"  # agree with the off-by-one majority
    sols = [OFF_BY_ONE, OFF_BY_ONE, OFF_BY_ONE, CORRECT_A]
    stage, _ = make(scripted(sols, wrong_tests), sandbox, k=4)
    (out,) = stage(list(af_io.read_inputs([seed])))
    meta = out["meta"]["exec_feedback"]
    assert [t["source"] for t in meta["tests"]] == ["reference", "model", "model"]
    assert meta["trusted"] == [0, 2] and meta["chosen"] == 3
    assert out["messages"][-1]["content"] == CORRECT_A
    assert [p["rejected_score"] for p in out["pairs"]] == [0.5]  # identical wrong texts: one pair


def test_no_passing_solution_is_rejected_with_everything_kept(sandbox):
    sols = [OFF_BY_ONE, CRASHING]
    stage, _ = make(scripted(sols, "assert sum_to(3) == 6\n"), sandbox, k=2)
    (out,) = stage([row()])
    assert out["reject"] == {"stage": "exec_feedback", "reason": "no_passing_solution"}
    meta = out["meta"]["exec_feedback"]
    assert meta["pass_matrix"] == [[False], [False]] and meta["solutions_raw"] == sols
    assert "pairs" not in out


def test_unparseable_tests_reject_with_the_raw_text(sandbox):
    stage, _ = make(scripted([CORRECT_A], "Tests: it should add numbers."), sandbox, k=1)
    (out,) = stage([row()])
    assert out["reject"] == {
        "stage": "exec_feedback",
        "reason": "no_tests",
        "raw": "Tests: it should add numbers.",
    }
    assert stage.sandbox.calls == []


def test_min_trusted_tests(sandbox):
    stage, _ = make(scripted([CORRECT_A], "assert sum_to(3) == 6\n"), sandbox, k=1, min_trusted_tests=2)
    (out,) = stage([row()])
    assert out["reject"]["reason"] == "too_few_trusted_tests: 1 < 2"


def test_sandbox_error_is_never_a_failure(sandbox):
    boom = "```python\ndef sum_to(n):\n    return 0  # BOOM\n```"
    stage, _ = make(scripted([CORRECT_A, boom, OFF_BY_ONE]), sandbox, k=3)
    (out,) = stage([row()])
    meta = out["meta"]["exec_feedback"]
    assert meta["pass_matrix"][1] is None and meta["sandbox_errors"] == [1]
    assert meta["statuses"][1] == "SANDBOX_ERROR" and meta["scores"][1] is None
    assert all("BOOM" not in p["rejected"] for p in out["pairs"]) and len(out["pairs"]) == 1

    stage, _ = make(scripted([boom, boom, PROSE]), sandbox, k=3)
    (out,) = stage([row()])
    assert out["reject"]["reason"] == "sandbox_error"  # nothing was judged: not the model's fault


def test_entry_point_falls_back_to_solution(sandbox):
    sols = ["```python\ndef solution(x):\n    return x * 2\n```"]
    stage, _ = make(scripted(sols, "assert solution(2) == 4\n"), sandbox, k=1)
    (out,) = stage([row("Double a number.")])
    assert out["meta"]["exec_feedback"]["entry_point"] == "solution" and out["reject"] is None


def test_params_validate_sandbox_limits():
    with pytest.raises(ValueError, match="sandbox.Limits"):
        ExecFeedback.Params(limits={"wall_seconds": 2})
    assert ExecFeedback.Params().k == 4 and ExecFeedback.Params().allow_unsafe is False


# ---- both kinds of test in one pass matrix ---------------------------------------------------------

MIXED = """assert sum_to(3) == 6
assert 10 == sum_to(4)
assert sum_to(n=2) == 3
assert not sum_to(0)
assert sum_to(5) > 14
assert sum_to(2) == [1, 2][0] + 2
"""
TRUTHY_ZERO = "```python\ndef sum_to(n):\n    return n * (n + 1) // 2 if n else None\n```"
EXITS = "```python\nimport sys\ndef sum_to(n):\n    sys.exit(0)\n```"


def test_call_and_assert_tests_feed_one_matrix(sandbox):
    sols = [CORRECT_A, OFF_BY_ONE, TRUTHY_ZERO, EXITS]
    stage, _ = make(scripted(sols, MIXED), sandbox, k=4)
    (out,) = stage([row()])
    meta = out["meta"]["exec_feedback"]
    assert meta["test_kinds"] == {"reference": 0, "call": 3, "assert": 3}
    assert [t["kind"] for t in meta["tests"]] == ["call", "call", "call", "assert", "assert", "assert"]
    assert meta["tests"][2] == {"kind": "call", "call": "sum_to(n=2)", "expected": "3", "source": "model"}
    assert meta["tests"][3] == {"kind": "assert", "code": "assert not sum_to(0)", "source": "model"}
    assert meta["pass_matrix"][0] == [True] * 6
    assert meta["pass_matrix"][1] == [False, False, False, True, False, False]  # sum_to(0) is 0 either way
    # returns None for 0: `assert not` passes it, the call cases judge the values
    assert meta["pass_matrix"][2] == [True] * 6
    # sys.exit before any case: no call case and no assert case passes
    assert meta["pass_matrix"][3] == [False] * 6
    assert meta["statuses"][:3] == ["PASS", "FAIL", "PASS"] and meta["statuses"][3] != "PASS"
    assert meta["trusted"] == [0, 1, 2, 3, 4, 5] and meta["chosen"] == 0
    assert stage.sandbox.calls == [8]  # a call Job and an assert Job per solution, one sandbox call
    assert json.dumps(out)


def test_expected_values_of_converted_tests_stay_out_of_the_sandbox(sandbox):
    seen = []

    class Spy(CountingSandbox):
        def run(self, jobs):
            seen.extend(jobs)
            return super().run(jobs)

    engine = ScriptedEngine(rule=lambda conv, k, seed: scripted([CORRECT_A], MIXED)(conv[-1]["content"], k))
    stage = ExecFeedback(
        ExecFeedback.Params(k=1), StageContext("exec_feedback", 1), engine=engine, sandbox=Spy(sandbox)
    )
    stage([row()])
    call_jobs = [j for j in seen if j.kind == "call"]
    assert_jobs = [j for j in seen if j.kind == "assert"]
    assert [c.expected for c in call_jobs[0].tests] == [6, 10, 3]  # held by the harness
    assert [c.code for c in assert_jobs[0].tests] == MIXED.splitlines()[3:]
    assert all("== 6" not in c.code and "10 ==" not in c.code for c in assert_jobs[0].tests)


def test_only_assert_tests_still_run_and_agree(sandbox):
    stage, _ = make(
        scripted([CORRECT_A, OFF_BY_ONE], "assert sum_to(5) > 14\nassert not sum_to(0)\n"), sandbox, k=2
    )
    (out,) = stage([row()])
    meta = out["meta"]["exec_feedback"]
    assert meta["test_kinds"] == {"reference": 0, "call": 0, "assert": 2}
    assert meta["pass_matrix"] == [[True, True], [False, True]] and meta["chosen"] == 0
    assert stage.sandbox.calls == [2]


# ---- the seed's reference solution as a candidate ------------------------------------------------


def seeded_row(tmp_path, **extra):
    seed = tmp_path / "code.jsonl"
    line = {"instruction": TASK, "entry_point": "sum_to", "tests": [{"args": [3], "expected": 6}], **extra}
    seed.write_text(json.dumps(line) + "\n")
    return list(af_io.read_inputs([seed]))


def test_include_reference_makes_a_row_certain(sandbox, tmp_path):
    solution = (
        "def sum_to(n):\n    total = 0\n    for i in range(n + 1):\n        total += i\n    return total"
    )
    rows = seeded_row(tmp_path, solution=solution)
    stage, _ = make(scripted([OFF_BY_ONE, PROSE], "assert sum_to(4) == 10\n"), sandbox, k=2)
    (without,) = stage([dict(r) for r in seeded_row(tmp_path, solution=solution)])
    assert without["reject"]["reason"] == "no_passing_solution"  # the param is off by default

    stage, _ = make(
        scripted([OFF_BY_ONE, PROSE], "assert sum_to(4) == 10\n"), sandbox, k=2, include_reference=True
    )
    (out,) = stage(rows)
    meta = out["meta"]["exec_feedback"]
    assert out["reject"] is None and meta["candidates"] == ["model", "model", "reference"]
    assert meta["chosen"] == 2 and meta["pass_matrix"][2] == [True, True]
    assert out["messages"][-1]["content"] == f"```python\n{solution}\n```"
    assert [p["rejected"] for p in out["pairs"]] == [OFF_BY_ONE, PROSE]


def test_include_reference_prefers_a_passing_model_solution(sandbox, tmp_path):
    rows = seeded_row(tmp_path, solution="def sum_to(n):\n    return sum(range(n + 1))")
    stage, _ = make(scripted([CORRECT_A]), sandbox, k=1, include_reference=True)
    (out,) = stage(rows)
    assert out["meta"]["exec_feedback"]["chosen"] == 0 and out["messages"][-1]["content"] == CORRECT_A


def test_every_code_seed_solution_passes_its_reference_tests(sandbox):
    from sandbox import Case, Job

    lines = [json.loads(x) for x in REPO_SEEDS.read_text().splitlines() if x.strip()]
    assert lines and all(x.get("solution") for x in lines)
    jobs = [
        Job(code=x["solution"], entry_point=x["entry_point"], tests=[Case.from_dict(t) for t in x["tests"]])
        for x in lines
    ]
    verdicts = sandbox.run(jobs)
    assert [(x["entry_point"], v.status.value) for x, v in zip(lines, verdicts, strict=True)] == [
        (x["entry_point"], "PASS") for x in lines
    ]
