"""alignfactory.ablate.mathset: deterministic seeded problems, exact sizes, correct answers (recomputed from
the stored operands), gold solutions the math verifier reads, leak-free splits, and the CLI's two files."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from alignfactory.ablate import mathset
from alignfactory.ablate.leak import find_leaks, normalize_question
from alignfactory.ablate.mathset import gold_solution, make_problems, split_problems, train_rows
from alignfactory.io import read_inputs
from alignfactory.verify.math import equivalent, extract_answer


def recompute(p: dict) -> int:
    v = p["operands"][0]
    for op, x in zip(p["ops"], p["operands"][1:], strict=True):
        assert op in "+-"
        v = v + x if op == "+" else v - x
    return v


def test_deterministic_for_a_seed_and_seeds_differ():
    a, b = make_problems(200, seed=7), make_problems(200, seed=7)
    assert a == b
    c = make_problems(200, seed=8)
    assert [p["question"] for p in a] != [p["question"] for p in c]
    assert len({p["question"] for p in a} & {p["question"] for p in c}) < 20
    assert make_problems(50, seed=7) == a[:50]  # a prefix: n does not change the first items


@pytest.mark.parametrize("n", [0, 1, 13, 500])
def test_exact_sizes_ids_and_unique_questions(n):
    ps = make_problems(n, seed=3)
    assert len(ps) == n
    assert [p["id"] for p in ps] == [f"math-3-{i}" for i in range(n)]
    assert len({normalize_question(p["question"]) for p in ps}) == n


def test_answers_are_correct_integers_and_fields():
    ps = make_problems(1000, seed=0)
    for p in ps:
        assert set(p) >= {"id", "question", "answer", "kind", "operands", "ops"}
        assert p["kind"] in mathset.KINDS
        assert len(p["operands"]) == len(p["ops"]) + 1
        assert p["answer"] == str(recompute(p)) and int(p["answer"]) >= 0
        # the question states every operand (bare arithmetic and word problems alike)
        for x in p["operands"]:
            assert str(x) in p["question"]
        assert len(p["ops"]) == (2 if p["kind"] == "two_step" else 1)
    kinds = Counter(p["kind"] for p in ps)
    assert kinds["add"] + kinds["sub"] > 0.6 * len(ps)  # one-step word problems dominate
    assert kinds["two_step"] > 0 and kinds["arith"] > 0
    words = [p for p in ps if p["kind"] in ("add", "sub")]
    assert max(max(p["operands"]) for p in words) <= 60  # small numbers
    assert len({p["template"] for p in words}) >= 24  # varied templates actually used
    assert any(p["question"].startswith("What is") for p in ps if p["kind"] == "arith")


def test_gold_solution_is_read_by_the_math_verifier():
    for p in make_problems(300, seed=1):
        text = gold_solution(p)
        assert text.endswith(f"The answer is {p['answer']}.")
        assert extract_answer(text) == p["answer"]
        assert equivalent(text, p["answer"])
    two = {"operands": [29, 10, 17], "ops": ["+", "-"]}
    assert gold_solution(two) == "First, 29 + 10 = 39. Then, 39 - 17 = 22. The answer is 22."


@pytest.mark.parametrize(
    ("n_train", "n_eval", "seed"), [(400, 150, 0), (1000, 200, 5), (0, 10, 1), (10, 0, 1)]
)
def test_split_sizes_disjoint_and_no_leaks(n_train, n_eval, seed):
    train, evals = split_problems(n_train, n_eval, seed)
    assert len(train) == n_train and len(evals) == n_eval
    assert train == make_problems(n_train, seed)
    assert not {p["id"] for p in train} & {p["id"] for p in evals}
    assert not {normalize_question(p["question"]) for p in train} & {
        normalize_question(p["question"]) for p in evals
    }
    assert find_leaks(evals, train_rows(train)) == []
    assert split_problems(n_train, n_eval, seed) == (train, evals)


def test_split_replaces_items_that_would_leak():
    # at this size some eval draws share (numbers, answer) with a training item: they are redrawn
    train, evals = split_problems(1500, 300, 2)
    last = int(evals[-1]["id"].rsplit("-", 1)[1])
    assert last > 1500 + 300 - 1  # ids skipped: items were redrawn
    assert find_leaks(evals, train_rows(train)) == []
    assert Counter(p["kind"] for p in evals)["add"] > 0.2 * len(evals)  # redrawn as the same kind


def test_cli_writes_train_and_eval(tmp_path, capsys):
    out = tmp_path / "data"
    assert mathset.main(["--train", "30", "--eval", "12", "--seed", "4", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"] == 30 and summary["eval"] == 12
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(train) == 30 and len(evals) == 12
    for r in train:
        assert r["messages"] == [{"role": "user", "content": r["messages"][0]["content"]}]
        assert r["answer"].isdigit() and r["solution"].endswith(f"The answer is {r['answer']}.")
        assert r["id"].startswith("math-4-")
    for r in evals:
        assert set(r) >= {"id", "question", "answer"} and r["answer"].lstrip("-").isdigit()
    assert find_leaks(evals, train) == []
    # the math pipeline's reader takes the train rows as seed rows: the user turn, answer kept in seed
    rows = list(read_inputs([out / "train.jsonl"]))
    assert len(rows) == 30 and all(r["reject"] is None for r in rows)
    assert rows[0]["messages"][0] == {"role": "user", "content": train[0]["messages"][0]["content"]}
    assert rows[0]["seed"]["answer"] == train[0]["answer"]


def test_write_jsonl_round_trip(tmp_path):
    rows = [{"id": "x", "question": "What is 1 + 2?", "answer": "3"}]
    path = mathset.write_jsonl(rows, tmp_path / "a" / "b.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


def test_eval_items_carry_a_held_out_pair_that_differs_only_in_the_result():
    """chosen: the worked arithmetic, right; rejected: the same, off by 1-3 (never negative)."""
    _, evals = mathset.split_problems(0, 200, 0)
    rows = mathset.eval_rows(evals)
    offsets = set()
    for p, r in zip(evals, rows, strict=True):
        expr, right = r["chosen"].split(" = ")[0], int(p["answer"])
        assert r["chosen"] == f"{expr} = {right}. The answer is {right}."
        assert r["rejected"].startswith(f"{expr} = ")
        wrong = int(r["rejected"].split(" = ")[1].split(".")[0])
        assert r["rejected"] == f"{expr} = {wrong}. The answer is {wrong}." and wrong >= 0
        offsets.add(wrong - right)
        # the expression is the problem's: evaluated, it gives the answer
        nums, ops = [int(x) for x in re.findall(r"\d+", expr)], re.findall(r" ([+-]) ", expr)
        assert nums[0] + sum(x if o == "+" else -x for o, x in zip(ops, nums[1:], strict=True)) == right
    assert offsets <= {-3, -2, -1, 1, 2, 3} and len(offsets) >= 4
    assert mathset.eval_rows(evals) == rows  # seeded by id: the same pairs every time
