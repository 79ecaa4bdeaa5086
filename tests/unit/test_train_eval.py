"""`alignfactory eval`'s numbers on cases whose answers are known (issue 16): planted completions give
the expected rates through the real scorers (sympy math, the real sandbox), references come from the
run's stage shards, and a checkpoint that is the base model scores exactly as the base model."""

import json

import pytest

from alignfactory.train import evaluate as ev
from alignfactory.train.common import tiny_llama

ADD_TESTS = [{"args": [1, 2], "expected": 3}, {"args": [2, 2], "expected": 4}]
SEEDS = [
    {"q": "What is 6 times 7?", "answer": "42"},
    {"q": "What is 10 minus 3?", "answer": "7"},
    {"q": "Write add(a, b).", "entry_point": "add", "tests": ADD_TESTS},
    {"q": "Shout hello.", "verifier": "def evaluate(response):\n    return response.isupper()"},
    {"q": "Say anything."},
]
PLANTED = {
    "What is 6 times 7?": "The answer is \\boxed{42}.",  # right
    "What is 10 minus 3?": "The answer is \\boxed{8}.",  # wrong
    "Write add(a, b).": "def add(a, b):\n    return 3",  # passes 1 of 2 tests
    "Shout hello.": "HELLO!",  # passes
    "Say anything.": "ok",
}


def write_run(root):
    """A run dir as export and the stages leave it: sft/holdout.jsonl holds the prompts, the
    references ride in the stage shards' `seed` (the holdout rows themselves do not carry them)."""
    (root / "sft").mkdir(parents=True)
    (root / "stages" / "01-generate").mkdir(parents=True)
    conv = lambda s: [{"role": "user", "content": s["q"]}, {"role": "assistant", "content": "x"}]  # noqa: E731
    (root / "sft" / "holdout.jsonl").write_text(
        "".join(json.dumps({"messages": conv(s)}) + "\n" for s in SEEDS)
    )
    shard = [json.dumps({"_shard": {}})] + [
        json.dumps({"messages": conv(s), "seed": {k: v for k, v in s.items() if k != "q"}}) for s in SEEDS
    ]
    (root / "stages" / "01-generate" / "shard-00000.jsonl").write_text("\n".join(shard) + "\n")
    return root


def test_planted_completions_give_the_expected_rates(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run")
    rows = ev.holdout_rows(run)
    assert [sorted(k for k in r if k != "prompt") for r in rows] == [
        ["answer"], ["answer"], ["entry_point", "tests"], ["verifier"], []
    ]  # fmt: skip
    monkeypatch.setattr(ev, "complete", lambda path, rs, n: [PLANTED[r["prompt"][-1]["content"]] for r in rs])
    scorers = ev.Scorers("auto")
    try:
        m = ev.evaluate_model("planted", rows, scorers, max_new_tokens=16)["metrics"]
    finally:
        scorers.close()
    assert m["math_accuracy"] == {"n": 2, "value": 0.5}
    assert m["code_pass_rate"] == {"n": 1, "value": 0.5}
    assert m["constraint_pass_rate"] == {"n": 1, "value": 1.0}
    assert m["mean_response_chars"]["value"] == pytest.approx(sum(map(len, PLANTED.values())) / 5)


def test_a_checkpoint_that_is_the_base_model_scores_as_the_base_model(tmp_path):
    run = write_run(tmp_path / "run")
    base = str(tiny_llama(tmp_path / "tiny"))
    same = tmp_path / "copy"
    import shutil

    shutil.copytree(base, same)
    results, table = ev.evaluate([str(same)], run, before=base, max_new_tokens=8)
    assert results[base]["metrics"] == results[str(same)]["metrics"]
    assert results[base]["samples"] == results[str(same)]["samples"]
    assert set(results[base]["metrics"]) >= {"math_accuracy", "code_pass_rate", "constraint_pass_rate"}
    saved = json.loads((run / "eval" / "copy.json").read_text())
    assert saved["rows"] == 5 and saved["results"][base]["metrics"] == results[base]["metrics"]
