"""export's truth about its data (issue 15 items 1, 3, 7, 9): the holdout split keeps every row of one
seed on one side; the dataset card states contamination, generator models, seed licences, judge
consistency and rows longer than the training configs' max_length; the manifest and the report
carry judge consistency. The card test builds a tiny run dir by hand (no Ray)."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest

from alignfactory import inspect, records, report, run
from alignfactory.spec import validate
from alignfactory.stages.assemble.export import Export, count_tokens, is_holdout, lineage_root, max_lengths
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.decontaminate import Decontaminate

BENCH_Q = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def seed(i: int, text: str | None = None) -> dict:
    return records.new_row(
        [{"role": "user", "content": text or f"Seed question number {i}?"}], {"file": "s.jsonl", "line": i}
    )


def children(parent: dict, k: int) -> list[dict]:
    """k sibling rows of one seed (samples, evolutions, revisions): new content, new ids, same source."""
    out = []
    for j in range(k):
        msgs = [parent["messages"][0] | {"content": parent["messages"][0]["content"] + f" (variant {j})"}]
        child = records.derive(parent, "evolve", msgs)
        child["messages"] = records.with_response(
            child, f"Answer {j} to {child['messages'][0]['content']}", "stop"
        )
        child["id"] = records.message_id(child["messages"])
        out.append(child)
    return out


def export(run_dir: Path, rows: list[dict], **params) -> list[dict]:
    params = {"files": ["jsonl"], "count_tokens": "estimate"} | params
    return Export(Export.Params(**params), StageContext("export", 9, run_dir=run_dir))(rows)


# ---- holdout: by lineage root -------------------------------------------------------------------


def test_siblings_of_one_seed_land_on_the_same_side(tmp_path):
    # fails on the old code: it hashed each row id, so the 3 siblings of a seed split across sides
    rows = [c for i in range(1, 41) for c in children(seed(i), 3)]
    out = export(tmp_path, rows, holdout=0.3)
    sides: dict[str, set[str]] = {}
    for r in out:
        sides.setdefault(r["source"]["line"], set()).add(r["meta"]["export"]["split"])
    assert all(len(s) == 1 for s in sides.values()), sides
    assert {"train", "holdout"} == set().union(*sides.values())  # both sides used
    held = [json.loads(x) for x in (tmp_path / "sft" / "holdout.jsonl").read_text("utf-8").splitlines()]
    train = [json.loads(x) for x in (tmp_path / "sft" / "train.jsonl").read_text("utf-8").splitlines()]
    prompts = lambda rows: {r["messages"][0]["content"].split(" (variant")[0] for r in rows}  # noqa: E731
    assert not prompts(held) & prompts(train)  # no seed on both sides
    assert len(held) == 3 * sum(is_holdout(f"s.jsonl:{i}", 0.3) for i in range(1, 41))


def test_lineage_root_is_the_input_line_and_falls_back_to_the_id():
    s = seed(7)
    (child,) = children(s, 1)
    assert lineage_root(s) == lineage_root(child) == "s.jsonl:7"
    bare = {"id": "abc", "messages": []}
    assert lineage_root(bare) == "id:abc"


# ---- the card ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A run dir as the runner leaves it before export: manifest (spec + stage totals), a decontaminate
    stage with its _PLAN.pkl, a judge stage whose rows carry meta.judge.consistency; a seed file with
    a LICENSE.md beside it."""
    monkeypatch.chdir(tmp_path)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "s.jsonl").write_text(json.dumps({"instruction": "q"}) + "\n")
    (seeds / "LICENSE.md").write_text("# Seeds\n`s.jsonl` is CC0-1.0.\n")
    (seeds / "LICENSE-other.md").write_text("# Other\n`o.jsonl` is MIT.\n")
    bench = tmp_path / "gsm.jsonl"
    bench.write_text(json.dumps({"question": BENCH_Q, "answer": "72"}) + "\n")
    root = tmp_path / "run"
    # decontaminate over 3 rows (one copies the benchmark): a real plan
    dec = Decontaminate(
        Decontaminate.Params(benchmarks=[{"path": str(bench), "field": "question"}], on="instruction"),
        StageContext("decontaminate", 1),
    )
    plan = dec.combine([dec.summarize([seed(1), seed(2, "Please solve: " + BENCH_Q), seed(3)], 0)])
    (root / "stages" / "01-decontaminate").mkdir(parents=True)
    (root / "stages" / "01-decontaminate" / "_PLAN.pkl").write_bytes(pickle.dumps({"plan": plan}))
    judged = [seed(i) for i in range(1, 4)]
    for r, c in zip(judged, [(3, 2, 1, 0), (2, 1, 0, 1), None], strict=True):
        if c:
            r["meta"]["judge"] = {"consistency": dict(zip(inspect.CONSISTENCY, c, strict=True))}
    (root / "stages" / "03-judge").mkdir(parents=True)
    run.write_shard(root / "stages" / "03-judge" / "shard-00000.jsonl", judged, {"rows_in": 3})
    spec = {
        "name": "tiny",
        "input": {"path": "seeds/s.jsonl"},
        "model": {"backend": "transformers", "path": None},
        "stages": [
            {"name": "decontaminate", "params": {}},
            {"name": "generate", "params": {}},
            {"name": "judge", "params": {}, "model": {"backend": "openai", "path": "judge-7b"}},
            {"name": "export", "params": {}},
        ],
    }
    stages = [
        {"index": 1, "name": "decontaminate", "dir": "stages/01-decontaminate", "rows_in": 3, "rejected": 1},
        {"index": 3, "name": "judge", "dir": "stages/03-judge", "rows_in": 3, "rejected": 0},
    ]
    (root / "manifest.json").write_text(json.dumps({"name": "tiny", "spec": spec, "stages": stages}))
    return root, bench


def card_of(root: Path, fmt: str = "sft") -> str:
    return (root / fmt / "README.md").read_text("utf-8")


def test_card_states_contamination_models_licences_consistency_and_long_rows(tiny_run):
    root, bench = tiny_run
    long = records.new_row(
        [{"role": "user", "content": "Write a long essay."}, records.assistant("word " * 700, "stop")],
        {"file": "s.jsonl", "line": 2},
    )  # 3500 chars: ~880 estimated tokens, over 512 (cpu profiles), under 8192
    rows = [seed(1) | {"messages": records.with_response(seed(1), "Short answer.", "stop")}, long]
    export(root, rows, files=["jsonl", "card"])
    card = card_of(root)
    # contamination: the benchmark file with its sha256, n-gram size, rows checked and rejected
    sha = hashlib.sha256(bench.read_bytes()).hexdigest()
    assert f"`{sha}`" in card and "| gsm.jsonl | question | 1 | 1 |" in card
    assert "checked the instruction text of 3 rows; 1 rejected as contaminated (13-word" in card
    # generator models per LLM stage; export and decontaminate are not LLM stages
    assert "- 02-generate: `embedded:smollm2-135m-instruct` (transformers, auto)" in card
    assert "- 03-judge: `judge-7b` (openai, auto)" in card
    assert "01-decontaminate: `" not in card
    # the licence file of the input file's folder that names it
    assert "seeds/s.jsonl`: `seeds/LICENSE.md`" in card and "LICENSE-other.md" not in card
    # judge consistency summed over the judge stage's rows
    assert "5 of 5 comparisons" not in card
    assert "- 03-judge: 3 of 5 comparisons judged both ways agree under position swap (60.0%); " in card
    assert "1 flipped, counted as ties; 1 unreadable, dropped (2 rows)" in card
    # the long row is flagged against the 512-token profiles, not against the 8192 ones
    assert "| train_sft_cpu.yaml | 512 | 1 | " + long["id"] + " |" in card
    assert "| train_sft.yaml | 8192 | 0 | - |" in card
    assert "Lengths in estimated tokens" in card


def test_card_says_not_judged_pairwise_and_not_checked(tmp_path):
    root = tmp_path / "run"
    (root / "stages" / "02-judge").mkdir(parents=True)
    run.write_shard(root / "stages" / "02-judge" / "shard-00000.jsonl", [seed(1)], {"rows_in": 1})
    spec = {"name": "t", "input": {"path": []}, "stages": [{"name": "judge"}, {"name": "export"}]}
    (root / "manifest.json").write_text(json.dumps({"name": "t", "spec": spec, "stages": []}))
    export(
        root, [seed(1) | {"messages": records.with_response(seed(1), "A.", "stop")}], files=["jsonl", "card"]
    )
    card = card_of(root)
    assert "- 02-judge: not judged pairwise (1 rows scored one at a time)" in card
    assert "Not checked: the run has no decontaminate stage" in card


def test_preference_lengths_count_prompt_plus_the_longer_side(tiny_run):
    root, _ = tiny_run
    r = seed(1) | {"messages": records.with_response(seed(1), "A.", "stop")}
    r["pairs"] = [{"chosen": "yes " * 600, "rejected": "no", "stage": "t"}]
    r["pairs"][0] |= {"chosen_finish_reason": "stop", "rejected_finish_reason": "stop"}
    out = export(root, [r], formats=["preference"], files=["jsonl", "card"])
    prompt = records.prompt_messages(r)
    longer = count_tokens(prompt + [{"role": "assistant", "content": "yes " * 600}], None)
    assert out[0]["meta"]["export"]["pair_tokens"] == [longer] and longer > 512
    assert "| train_dpo_cpu.yaml | 512 | 1 |" in card_of(root, "preference")
    assert set(max_lengths("preference")) >= {"train_dpo.yaml", "train_dpo_cpu.yaml", "train_reward_cpu.yaml"}


def test_estimate_counts_cjk_characters_one_each():
    en = count_tokens([{"role": "user", "content": "a" * 400}], None)
    zh = count_tokens([{"role": "user", "content": "字" * 400}], None)
    assert en == 100 + 4 and zh == 400 + 4


# ---- manifest and report -------------------------------------------------------------------------


def test_manifest_and_report_carry_judge_consistency(tiny_run, tmp_path):
    root, _ = tiny_run
    tree = {
        "name": "tiny",
        "input": {"path": "seeds/s.jsonl"},
        "stages": [{"name": "judge"}, {"name": "judge"}],
    }
    runner = run.Runner(validate(tree), output=str(tmp_path / "r2"))
    (runner.root / "stages" / "01-judge").mkdir(parents=True)
    rows = [seed(1), seed(2)]
    rows[0]["meta"]["judge"] = {
        "consistency": {"judged": 4, "agree": 3, "ties_under_swap": 1, "unreadable": 0}
    }
    run.write_shard(runner.root / "stages" / "01-judge" / "shard-00000.jsonl", rows, {"rows_in": 2})
    (runner.root / "stages" / "02-judge").mkdir(parents=True)  # a judge that scored one row at a time
    run.write_shard(runner.root / "stages" / "02-judge" / "shard-00000.jsonl", [seed(3)], {"rows_in": 1})
    m = runner.write_manifest(1.0)
    assert m["judge_consistency"]["01-judge"] == {
        "rows": 2,
        "pairwise_rows": 1,
        "judged": 4,
        "agree": 3,
        "ties_under_swap": 1,
        "unreadable": 0,
    }
    assert (
        json.loads((runner.root / "manifest.json").read_text())["judge_consistency"] == m["judge_consistency"]
    )
    (table,) = report.judge_consistency(runner.root)
    assert list(table["agree rate"]) == ["75.0%", "not judged pairwise"]
    (dec,) = report.contamination(root)
    assert list(dec["benchmark"]) == ["gsm.jsonl"] and list(dec["contaminated"]) == [1]
    readme = inspect.dataset_card(runner.root)
    assert "## Judge consistency (position swap)" in readme and "3 of 4 comparisons" in readme
    assert "## Contamination" in readme and "no decontaminate stage" in readme
    assert "- `seeds/s.jsonl`: `seeds/LICENSE.md`" in readme  # the run README names the licence too


def test_smollm2_tokenizer_counts_the_chat_template_tokens():
    from alignfactory.stages.assemble.export import training_tokenizer

    tok, how = training_tokenizer()
    if tok is None:
        pytest.skip(f"SmolLM2 tokenizer not available here: {how}")
    msgs = [
        {"role": "user", "content": "Tell me a story."},
        {"role": "assistant", "content": "Once a fox " * 400},
    ]
    n = count_tokens(msgs, tok)
    # 1200 words of text + the template's role markers; a dict's len() (2) was the old bug
    assert 1200 <= n <= 1300, n
    assert how.startswith("tokens (SmolLM2")
