"""export's formats, holdout split and dataset card; the reward stage on a tiny random reward model."""

from __future__ import annotations

import json

import pytest

from alignfactory import records
from alignfactory.stages.assemble.export import Export, is_holdout, lineage_root
from alignfactory.stages.base import StageContext


def row(instr: str, answer: str | None = None, system: str | None = None, pairs=None, category=None) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": instr}]
    if answer is not None:  # an answer that came with the input, as the reader marks it
        msgs.append(records.assistant(answer, records.FROM_INPUT))
    r = records.new_row(msgs, {"file": "t.jsonl", "line": 1})
    if pairs is not None:  # whole sides: export's completeness guard lets only those through
        r["pairs"] = [{"chosen_finish_reason": "stop", "rejected_finish_reason": "stop"} | p for p in pairs]
    if category:
        r["seed"] = {"category": category}
    return r


def export(tmp_path, rows, **params):
    return Export(Export.Params(**params), StageContext("export", 5, run_dir=tmp_path))(rows)


ALL = ["sft", "preference", "qwen", "sharegpt", "firefly"]
COLUMNS = {
    "sft": ["messages"],
    "preference": ["prompt", "chosen", "rejected"],
    "qwen": ["id", "conversations"],
    "sharegpt": ["id", "conversations"],
    "firefly": ["kind", "input", "target"],
}


def sample_rows():
    pair = {
        "chosen": "Good.",
        "rejected": "Bad answer",
        "stage": "pairs",
        "policy": "score:meta.judge.score",
        "margin": 3.0,
    }
    multi = records.new_row(
        [
            {"role": "user", "content": "Hi"},
            records.assistant("Hello", records.FROM_INPUT),
            {"role": "user", "content": "Bye"},
            records.assistant("Goodbye", records.FROM_INPUT),
        ],
        {"file": "t.jsonl", "line": 9},
    )
    return [
        row("Say something nice.", "Good.", system="Be kind.", pairs=[pair], category="chat"),
        row("翻译：早上好", "Good morning"),
        multi,
        row("Only a pair here", pairs=[{"chosen": "x", "rejected": "y", "stage": "constitution"}]),
        row("Nothing at all"),
    ]


def test_every_format_loads_with_load_dataset_with_its_columns(tmp_path):
    import datasets

    out = export(tmp_path, sample_rows(), formats=ALL, files=["jsonl", "parquet", "datasets", "card"])
    assert [r["reject"]["reason"] if r["reject"] else None for r in out] == [None] * 4 + ["no_response"]
    expected_rows = {"sft": 3, "preference": 2, "qwen": 3, "sharegpt": 3, "firefly": 2}
    for fmt in ALL:
        d = tmp_path / fmt
        for builder, file in (("json", "train.jsonl"), ("parquet", "train.parquet")):
            ds = datasets.load_dataset(builder, data_files=str(d / file), split="train")
            assert ds.column_names == COLUMNS[fmt] and ds.num_rows == expected_rows[fmt], (fmt, builder)
        whole = datasets.load_dataset(str(d))  # the card's YAML header names the splits
        assert list(whole) == ["train"] and whole["train"].column_names == COLUMNS[fmt]
        assert datasets.load_from_disk(str(d / "dataset")).num_rows == expected_rows[fmt]

    qwen = [json.loads(x) for x in (tmp_path / "qwen" / "train.jsonl").read_text("utf-8").splitlines()]
    assert qwen[0]["conversations"] == [
        {"from": "system", "value": "Be kind."},
        {"from": "user", "value": "Say something nice."},
        {"from": "assistant", "value": "Good."},
    ]
    assert qwen[0]["id"] == out[0]["id"]
    share = [json.loads(x) for x in (tmp_path / "sharegpt" / "train.jsonl").read_text("utf-8").splitlines()]
    assert [t["from"] for t in share[2]["conversations"]] == ["human", "gpt", "human", "gpt"]
    fire = [json.loads(x) for x in (tmp_path / "firefly" / "train.jsonl").read_text("utf-8").splitlines()]
    assert fire[0] == {"kind": "chat", "input": "Say something nice.", "target": "Good."}
    assert fire[1]["input"] == "翻译：早上好"  # multi-turn row skipped (counted in the card)
    assert (
        "multi-turn rows skipped (Firefly holds one turn): 1"
        in (tmp_path / "firefly" / "README.md").read_text()
    )
    pref = [json.loads(x) for x in (tmp_path / "preference" / "train.jsonl").read_text("utf-8").splitlines()]
    assert pref[0] == {
        "prompt": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Say something nice."},
        ],
        "chosen": [{"role": "assistant", "content": "Good."}],
        "rejected": [{"role": "assistant", "content": "Bad answer"}],
    }


def test_card_has_counts_pair_stats_and_spec(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {"name": "pref_test", "seed": 3}}))
    export(tmp_path, sample_rows(), formats=["preference"], files=["jsonl", "card"])
    card = (tmp_path / "preference" / "README.md").read_text("utf-8")
    assert "- train: 2 rows" in card and "path: train.jsonl" in card
    assert (
        "| score:meta.judge.score | 1 | 0.500 | 0.500 | 3.000 |" in card
    )  # len("Good.") / len("Bad answer")
    assert "| constitution | 1 | 1.000 | 1.000 | - |" in card
    assert '"name": "pref_test"' in card


def test_holdout_is_deterministic_by_row_id_and_follows_pairs(tmp_path):
    import datasets

    rows = [
        row(f"Question {i}?", f"Answer {i}.", pairs=[{"chosen": f"c{i}", "rejected": f"r{i}", "stage": "t"}])
        for i in range(200)
    ]
    for i, r in enumerate(rows, 1):  # one seed line each: the split hashes the lineage root (file:line)
        r["source"]["line"] = i
    export(tmp_path, rows, formats=["sft", "preference"], holdout=0.25)
    held = {r["id"] for r in rows if is_holdout(lineage_root(r), 0.25)}
    assert 20 < len(held) < 80  # ~50 of 200
    for fmt in ("sft", "preference"):
        train = datasets.load_dataset("json", data_files=str(tmp_path / fmt / "train.jsonl"), split="train")
        hold = datasets.Dataset.from_parquet(str(tmp_path / fmt / "holdout.parquet"))
        assert train.num_rows + hold.num_rows == 200 and hold.num_rows == len(held)
    sft_hold = [json.loads(x) for x in (tmp_path / "sft" / "holdout.jsonl").read_text("utf-8").splitlines()]
    assert {records.message_id(r["messages"]) for r in sft_hold} == held
    pref_hold = [
        json.loads(x) for x in (tmp_path / "preference" / "holdout.jsonl").read_text("utf-8").splitlines()
    ]
    held_questions = {r["messages"][0]["content"] for r in rows if r["id"] in held}
    assert {p["prompt"][0]["content"] for p in pref_hold} == held_questions  # a pair follows its row
    again = tmp_path / "again"
    again.mkdir()
    export(again, list(reversed(rows)), formats=["sft"], holdout=0.25)  # order does not matter
    assert len((again / "sft" / "holdout.jsonl").read_text().splitlines()) == len(held)
    assert not is_holdout(lineage_root(rows[0]), 0.0)


# ---- reward -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    """The training tests' random 2-layer llama as a 1-label sequence classifier (a reward model)."""
    from alignfactory.train.common import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("rm"), num_labels=1)


def test_reward_scores_batched_like_one_by_one_and_gates(tiny_reward_model):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignfactory.stages.synthesize.reward import Reward

    rows = [
        row("What is 2+2?", "4"),
        row("What is 2+2?", "The answer is four, because two plus two makes four."),
        row("写一首诗", "床前明月光"),
        row("No answer"),
    ]
    stage = Reward(Reward.Params(model_path=str(tiny_reward_model), batch_size=3), StageContext("reward", 3))
    out = stage(rows)
    scores = [r["meta"]["reward"]["score"] for r in out[:3]]
    assert out[3]["reject"]["reason"].startswith("no_response")
    assert len(set(scores)) == 3 and stage.tokens_in > 0

    # the same score computed by hand, one conversation at a time (no padding involved)
    tok = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    for r, s in zip(rows[:3], scores, strict=True):
        ids = tok(tok.apply_chat_template(r["messages"], tokenize=False), return_tensors="pt")
        with torch.inference_mode():
            assert model(**ids).logits[0, 0].item() == pytest.approx(s, abs=1e-4)

    gate = sorted(scores)[1]
    fresh = [
        row("What is 2+2?", "4"),
        row("What is 2+2?", "The answer is four, because two plus two makes four."),
        row("写一首诗", "床前明月光"),
    ]
    gated = Reward(
        Reward.Params(model_path=str(tiny_reward_model), min_score=gate), StageContext("reward", 3)
    )(fresh)
    assert sum(r["reject"] is not None for r in gated) == 1
    assert all(r["reject"]["reason"].startswith("below_min_score") for r in gated if r["reject"])


def test_reward_model_path_must_be_a_local_model_dir(tmp_path):
    from pydantic import ValidationError

    from alignfactory.stages.synthesize.reward import Reward

    with pytest.raises(ValidationError, match="not a local HF model directory"):
        Reward.Params(model_path=str(tmp_path))
