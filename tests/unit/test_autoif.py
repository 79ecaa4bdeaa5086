"""autoif on hand-written verifiers, examples and responses: scripted engine, real sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignfactory import io as af_io
from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.verify.autoif import AutoIF, evaluate_code, parse_cases
from tests.unit.scripted import ScriptedEngine
from tests.unit.test_exec_feedback import CountingSandbox

TASK = "Tell me about cats. Your whole answer must be in lowercase letters."
GOOD_FN = "```python\ndef evaluate(response):\n    return response == response.lower()\n```"
ALWAYS_TRUE = "```python\ndef evaluate(response):\n    return True\n```"
CRASHING = "```python\ndef evaluate(response):\n    return response.nope()\n```"
WRONG_FN = "```python\ndef check_case(response):\n    return response.isupper()\n```"  # aliased to evaluate
PROSE = "A verification function checks the answer."
CASES = "GOOD: cats purr and nap\nGOOD: yes\nBAD: Cats Purr\nBAD: CATS NAP\n"
REPO = Path(__file__).resolve().parents[2]
RESPONSES = ["cats are soft.", "Cats Are Soft.", "they nap a lot.", "CATS!"]


@pytest.fixture(scope="module")
def sandbox():
    from sandbox import Limits, Sandbox

    with Sandbox(Limits(wall_s=1.0), workers=2) as sb:
        yield sb


def make(sandbox, verifiers, cases=CASES, responses=RESPONSES, **params):
    def rule(conv, k, seed):
        prompt = conv[-1]["content"]
        if "`evaluate(response)`" in prompt:
            return verifiers[k]
        if "GOOD:" in prompt:
            return cases
        return responses[k]

    engine = ScriptedEngine(rule=rule)
    params = {"m": len(verifiers), "n": len(responses)} | params
    stage = AutoIF(
        AutoIF.Params(**params),
        StageContext("autoif", 1, seed=5),
        engine=engine,
        sandbox=CountingSandbox(sandbox),
    )
    return stage, engine


def row(text=TASK, file="seeds.jsonl", line=1):
    return records.new_row([{"role": "user", "content": text}], {"file": file, "line": line})


def seed_row(tmp_path, verifier, text=TASK):
    path = tmp_path / "if.jsonl"
    path.write_text(json.dumps({"instruction": text, "verifier": verifier}) + "\n")
    (seeded,) = af_io.read_inputs([path])  # the reader keeps `verifier` in row["seed"]
    return seeded


# ---- parsing model text ---------------------------------------------------------------------------


def test_parse_cases_labels_bullets_multiline_and_json():
    text = """Here are examples:
1. GOOD: all lower case
- **BAD**: Has Capitals
PASS: first line
second line
fail - NOPE
GOOD: all lower case

These show the rule. [{"response": "json one", "label": true}, {"response": "json two", "pass": false}]"""
    assert parse_cases(text) == [
        ("all lower case", True),
        ("Has Capitals", False),
        ("first line\nsecond line", True),  # a block runs to the next label or a blank line
        ("NOPE", False),
        ("json one", True),
        ("json two", False),
    ]
    assert parse_cases("Sure! Examples follow.\n1. cats\n2. Dogs") == []


def test_evaluate_code_aliases_a_lone_function_and_drops_prose():
    assert evaluate_code(GOOD_FN) == "def evaluate(response):\n    return response == response.lower()"
    assert evaluate_code(WRONG_FN).endswith("\n\nevaluate = check_case\n")
    assert evaluate_code(PROSE) is None


# ---- cross-validation, scoring, pairs ------------------------------------------------------------


def test_cross_validation_keeps_only_functions_that_agree_with_the_examples(sandbox):
    verifiers = [GOOD_FN, ALWAYS_TRUE, CRASHING, WRONG_FN, PROSE]
    stage, engine = make(sandbox, verifiers)
    (out,) = stage([row()])
    meta = out["meta"]["autoif"]
    fns = meta["functions"]
    assert [f["status"] for f in fns] == ["PASS", "FAIL", "ERROR", "FAIL", "UNPARSEABLE"]
    assert [f["accuracy"] for f in fns] == [1.0, 0.5, 0.0, 0.25, None]
    assert [f["kept"] for f in fns] == [True, False, False, False, False] and meta["kept"] == [0]
    assert meta["cv_matrix"][0] == [True] * 4 and meta["cv_matrix"][4] is None
    assert meta["cases"][2] == {"response": "Cats Purr", "label": False}
    assert meta["verifiers_raw"] == verifiers and meta["cases_raw"] == CASES

    assert meta["responses"] == RESPONSES and meta["pass_matrix"] == [[True, False, True, False]]
    assert meta["pass_rates"] == [1.0, 0.0, 1.0, 0.0] and meta["chosen"] == 0
    assert out["messages"][-1] == records.assistant("cats are soft.", "stop")
    assert [(p["chosen"], p["rejected"]) for p in out["pairs"]] == [
        ("cats are soft.", "Cats Are Soft."),
        ("cats are soft.", "CATS!"),
        ("they nap a lot.", "Cats Are Soft."),
        ("they nap a lot.", "CATS!"),
    ]
    assert out["pairs"][0] == {
        "chosen": "cats are soft.",
        "rejected": "Cats Are Soft.",
        "stage": "autoif",
        "chosen_score": 1.0,
        "rejected_score": 0.0,
        "chosen_finish_reason": "stop",
        "rejected_finish_reason": "stop",
    }
    assert stage.sandbox.calls == [4, 1]  # phase 1: 4 parseable functions; phase 2: the kept one
    v_call, c_call, r_call = engine.calls
    assert (v_call["sampling"].n, c_call["sampling"].n, r_call["sampling"].n) == (5, 1, 4)
    assert r_call["conversations"] == [row()["messages"]]  # responses answer the instruction itself
    assert len(set(v_call["seeds"] + c_call["seeds"] + r_call["seeds"])) == 3
    json.dumps(out)


def test_examples_of_one_label_cannot_validate_anything(sandbox):
    stage, engine = make(sandbox, [GOOD_FN, ALWAYS_TRUE], cases="GOOD: a\nGOOD: b\nGOOD: c\n")
    (out,) = stage([row()])
    assert out["reject"] == {"stage": "autoif", "reason": "no_valid_verifier"}
    meta = out["meta"]["autoif"]
    assert (
        meta["cases_usable"] is False
        and meta["kept"] == []
        and meta["verifiers_raw"] == [GOOD_FN, ALWAYS_TRUE]
    )
    assert len(engine.calls) == 2 and stage.sandbox.calls == []  # no responses sampled for it


def test_reference_verifier_is_always_kept(sandbox, tmp_path):
    reference = "def evaluate(response):\n    return 'cat' in response.lower()"
    stage, _ = make(sandbox, [PROSE], cases="nothing labelled")
    (out,) = stage([seed_row(tmp_path, reference)])
    meta = out["meta"]["autoif"]
    assert meta["functions"][-1] == {
        "source": "reference",
        "code": reference,
        "status": "NOT_RUN",
        "accuracy": None,
        "kept": True,
    }
    assert meta["kept"] == [1] and meta["pass_rates"] == [1.0, 1.0, 0.0, 1.0]
    assert out["messages"][-1]["content"] == "cats are soft."
    assert [p["rejected"] for p in out["pairs"]] == ["they nap a lot."] * 3


def test_partial_passes_give_pairs_but_no_sft_turn(sandbox, tmp_path):
    reference = "def evaluate(response):\n    return len(response) > 10"
    stage, _ = make(sandbox, [GOOD_FN], responses=["long and lower", "SHORT", "LONG AND UPPER"])
    (out,) = stage([seed_row(tmp_path, reference)])
    meta = out["meta"]["autoif"]
    assert meta["kept"] == [0, 1] and meta["functions"][1]["accuracy"] == 0.75  # "yes" is short
    assert meta["pass_rates"] == [1.0, 0.0, 0.5] and meta["chosen"] == 0
    assert [(p["chosen_score"], p["rejected_score"]) for p in out["pairs"]] == [(1.0, 0.0), (0.5, 0.0)]

    stage, _ = make(sandbox, [GOOD_FN], responses=["SHORT", "LONG AND UPPER"])
    (out,) = stage([seed_row(tmp_path, reference)])
    assert out["reject"] is None and records.response(out) is None  # preference data only
    assert out["pairs"][0]["chosen"] == "LONG AND UPPER" and out["meta"]["autoif"]["chosen"] is None


def test_no_passing_response_is_rejected_with_responses_kept(sandbox):
    stage, _ = make(sandbox, [GOOD_FN], responses=["Upper One", "Upper Two"])
    (out,) = stage([row()])
    assert out["reject"] == {"stage": "autoif", "reason": "no_passing_response"}
    assert out["meta"]["autoif"]["responses"] == ["Upper One", "Upper Two"]


def test_sandbox_error_functions_are_left_out(sandbox):
    boom = "```python\ndef evaluate(response):\n    return True  # BOOM\n```"
    stage, _ = make(sandbox, [GOOD_FN, boom])
    (out,) = stage([row()])
    fns = out["meta"]["autoif"]["functions"]
    assert fns[1]["status"] == "SANDBOX_ERROR" and fns[1]["kept"] is False and fns[1]["accuracy"] is None
    assert out["meta"]["autoif"]["cv_matrix"][1] is None and out["reject"] is None


def test_a_batch_runs_in_one_sandbox_call_per_phase(sandbox):
    stage, _ = make(sandbox, [GOOD_FN, ALWAYS_TRUE])
    outs = stage([row(), row(TASK + " Please."), row(TASK + " Thanks.")])
    assert stage.sandbox.calls == [6, 3]
    assert [o["reject"] for o in outs] == [None] * 3


# ---- the shipped seeds -----------------------------------------------------------------------------


def test_if_seed_verifiers_accept_and_refuse_their_checks(sandbox):
    from sandbox import Case, Job

    lines = [json.loads(s) for s in (REPO / "pipelines/seeds/if_seed.jsonl").read_text("utf-8").splitlines()]
    assert (
        len(lines) >= 30 and sum(any("\u4e00" <= c <= "\u9fff" for c in x["instruction"]) for x in lines) >= 4
    )
    jobs = [
        Job(
            code=x["verifier"],
            kind="call",
            entry_point="evaluate",
            tests=[
                Case(args=[x["check"]["pass"]], expected=True),
                Case(args=[x["check"]["fail"]], expected=False),
            ],
        )
        for x in lines
    ]
    bad = [
        (x["instruction"], v.detail)
        for x, v in zip(lines, sandbox.run(jobs), strict=True)
        if v.status.value != "PASS"
    ]
    assert bad == []


def test_code_seed_lines_name_their_function_and_carry_tests():
    lines = [
        json.loads(s) for s in (REPO / "pipelines/seeds/code_seed.jsonl").read_text("utf-8").splitlines()
    ]
    assert len(lines) >= 20
    for x in lines:
        assert f"`{x['entry_point']}(" in x["instruction"]
        assert len(x["tests"]) >= 3 and all(set(t) == {"args", "expected"} for t in x["tests"])


# ---- the seed's check texts with include_reference -------------------------------------------------

CHECK = {"pass": "cats sleep sixteen hours a day.", "fail": "Cats Sleep A Lot."}
# right on all of CASES and on check.fail (5/6 >= 0.8), wrong on check.pass (too long)
SHORT_LOWER = (
    "```python\ndef evaluate(response):\n    return response == response.lower() and len(response) < 20\n```"
)


def checked_row(tmp_path, check=CHECK):
    path = tmp_path / "if.jsonl"
    line = {"instruction": TASK, "verifier": GOOD_FN.strip("`").removeprefix("python\n"), "check": check}
    path.write_text(json.dumps(line) + "\n")
    (seeded,) = af_io.read_inputs([path])
    return seeded


def test_include_reference_adds_check_examples_and_response(sandbox, tmp_path):
    upper = ["Cats Are Soft.", "CATS!"]  # no model response passes
    stage, _ = make(sandbox, [GOOD_FN, SHORT_LOWER], responses=upper)
    (without,) = stage([checked_row(tmp_path)])
    assert without["reject"]["reason"] == "no_passing_response"  # off by default: check is unused

    stage, _ = make(sandbox, [GOOD_FN, SHORT_LOWER], responses=upper, include_reference=True)
    (out,) = stage([checked_row(tmp_path)])
    meta = out["meta"]["autoif"]
    assert meta["cases"][:2] == [
        {"response": CHECK["pass"], "label": True},
        {"response": CHECK["fail"], "label": False},
    ]
    # SHORT_LOWER scores 5/6 >= 0.8 but calls the reference pass text BAD: ground truth drops it
    assert meta["functions"][1]["accuracy"] == 5 / 6
    assert [f["kept"] for f in meta["functions"]] == [True, False, True]
    assert meta["responses"] == upper + [CHECK["pass"]]
    assert meta["responses_source"] == ["model", "model", "reference"]
    assert meta["chosen"] == 2 and out["messages"][-1]["content"] == CHECK["pass"]
    assert out["reject"] is None and all(p["chosen"] == CHECK["pass"] for p in out["pairs"])


def test_include_reference_without_check_changes_nothing(sandbox, tmp_path):
    stage, _ = make(sandbox, [GOOD_FN], include_reference=True)
    (out,) = stage([seed_row(tmp_path, GOOD_FN)])
    meta = out["meta"]["autoif"]
    assert meta["responses"] == RESPONSES and meta["responses_source"] == ["model"] * 4
    assert meta["chosen"] == 0
