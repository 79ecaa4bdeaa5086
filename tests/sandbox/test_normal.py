"""Ordinary programs: verdicts, per-case detail, strict types, whitespace policy."""

import pytest

from sandbox import Case, Job, Status

ADD = "def add(a, b):\n    return a + b\n"


def test_correct_solution_passes_every_case(run):
    v = run(
        ADD,
        kind="call",
        entry_point="add",
        tests=[Case(args=[1, 2], expected=3), Case(args=["a", "b"], expected="ab")],
    )
    assert v.status is Status.PASS
    assert v.pass_vector == [True, True]
    assert [c.actual for c in v.cases] == [3, "ab"]


def test_wrong_answer_fails_with_per_case_detail(run):
    code = "def add(a, b):\n    return a + b if a < 10 else 0\n"
    v = run(
        code,
        kind="call",
        entry_point="add",
        tests=[Case(args=[1, 2], expected=3), Case(args=[10, 1], expected=11)],
    )
    assert v.status is Status.FAIL
    assert v.pass_vector == [True, False]
    assert v.cases[1].status is Status.FAIL and v.cases[1].actual == 0


def test_exception_is_error_with_message(run):
    v = run(
        "def f(x):\n    return 1 // x\n",
        kind="call",
        entry_point="f",
        tests=[Case(args=[1], expected=1), Case(args=[0], expected=0)],
    )
    assert v.status is Status.ERROR
    assert [c.status for c in v.cases] == [Status.PASS, Status.ERROR]
    assert v.cases[1].error.startswith("ZeroDivisionError")


def test_load_error_and_missing_entry_point_are_errors(run):
    assert (
        run("def f(:\n", kind="call", entry_point="f", tests=[Case(args=[], expected=1)]).status
        is Status.ERROR
    )
    v = run("def g(): return 1", kind="call", entry_point="f", tests=[Case(args=[], expected=1)])
    assert v.status is Status.ERROR and "entry point" in v.cases[0].error


@pytest.mark.parametrize(
    "ret, expected, ok",
    [
        ("True", 1, False),  # bool is not int
        ("1", True, False),
        ("1", 1.0, False),  # int is not float
        ("1.0", 1.0, True),
        ("(1, 2)", [1, 2], True),  # tuples come back as sequences: JSON test data has no tuples
        ("[1, True]", [1, 1], False),
        ("{1: 'a'}", {1: "a"}, True),
        ("{'1': 'a'}", {1: "a"}, False),
        ("{1, 2}", {2, 1}, True),
        ("None", None, True),
        ("float('nan')", float("nan"), True),
    ],
)
def test_strict_types(run, ret, expected, ok):
    v = run(f"def f():\n    return {ret}\n", kind="call", entry_point="f", tests=[Case(expected=expected)])
    assert v.status is (Status.PASS if ok else Status.FAIL), (ret, expected, v.cases[0].actual)


def test_float_tolerance_is_opt_in(run):
    code = "def f():\n    return 0.1 + 0.2\n"
    assert run(code, kind="call", entry_point="f", tests=[Case(expected=0.3)]).status is Status.FAIL
    assert (
        run(code, kind="call", entry_point="f", tests=[Case(expected=0.3)], float_tol=1e-9).status
        is Status.PASS
    )


def test_args_are_fresh_per_case_and_kwargs_work(run):
    code = "def f(xs, k=0):\n    xs.append(k)\n    return xs\n"
    tests = [Case(args=[[1]], kwargs={"k": 2}, expected=[1, 2]), Case(args=[[1]], expected=[1, 0])]
    assert run(code, kind="call", entry_point="f", tests=tests).status is Status.PASS


def test_stdio_pass_fail_and_whitespace_policy(run):
    code = "n = int(input())\nprint(n * 2, ' ')\nprint()\n"
    tests = [Case(stdin="2\n", expected="4"), Case(stdin="5\n", expected="11")]
    v = run(code, tests=tests)
    assert v.status is Status.FAIL and v.pass_vector == [True, False]
    assert v.cases[0].actual == "4  \n\n"
    assert run(code, tests=[Case(stdin="2", expected="4")], whitespace="exact").status is Status.FAIL
    assert run(code, tests=[Case(stdin="2", expected="4  \n\n")], whitespace="exact").status is Status.PASS
    assert run("print('1  2\\n3')", tests=[Case(expected="1 2 3")], whitespace="tokens").status is Status.PASS


def test_stdio_exit_codes(run):
    assert run("import sys\nprint('x')\nsys.exit(0)", tests=[Case(expected="x")]).status is Status.PASS
    v = run("import sys\nprint('x')\nsys.exit(3)", tests=[Case(expected="x")])
    assert v.status is Status.ERROR and "exit=3" in v.cases[0].error
    v = run("raise ValueError('boom')", tests=[Case(expected="")])
    assert v.status is Status.ERROR and "boom" in v.stderr


def test_assert_style(run):
    code = "def sq(x):\n    return x * x\n"
    v = run(
        code,
        kind="assert",
        tests=[Case(code="assert sq(3) == 9"), Case(code="assert sq(2) == 5"), Case(code="sq(None)")],
    )
    assert [c.status for c in v.cases] == [Status.PASS, Status.FAIL, Status.ERROR]
    assert v.status is Status.ERROR
    assert run(code, kind="assert", tests=[Case(code="assert sq(3) == 9")]).status is Status.PASS


def test_unsupported_language_and_bad_jobs_are_rejected_clearly(sb):
    with pytest.raises(ValueError, match="language 'cpp' is not supported"):
        sb.run([Job(code="int main(){}", language="cpp", kind="stdio")])
    with pytest.raises(ValueError, match="entry_point"):
        sb.run([Job(code="", kind="call")])


def test_jobs_from_dicts_and_verdict_serialisation(sb):
    job = Job.from_dict(
        {
            "code": ADD,
            "kind": "call",
            "entry_point": "add",
            "tests": [{"args": [2, 2], "output": 4}],
            "id": "p1",
        }
    )
    v = sb.run([job])[0]
    d = v.to_dict()
    assert d["status"] == "PASS" and d["job_id"] == "p1" and d["cases"][0]["status"] == "PASS"


def test_many_jobs_keep_input_order(sb):
    jobs = [Job(code=f"print({i})", kind="stdio", tests=[Case(expected=str(i))]) for i in range(30)]
    assert [v.status for v in sb.run(jobs)] == [Status.PASS] * 30
