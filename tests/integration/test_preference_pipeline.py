"""pipelines/preference_data.yaml end to end on a real local Ray cluster and the real embedded model, as
shipped: generate 3 candidates per prompt -> pairwise judge with position swap -> pairs -> constitution.

Why a pair certainly reaches preference/: after `pairs` keeps one sample per prompt, `constitution`
critiques and revises each kept row and adds (revised, original) whenever the revision differs from
the original. Sampling is seeded per (spec seed, row id, call), so a run draws the same texts every
time; with 3 prompts, all three revisions would have to come back empty or verbatim for no pair to
be made, and the test prints the counts if that ever happens.
"""

import pytest
import yaml

from alignfactory import records
from alignfactory.run import Runner
from alignfactory.spec import load_spec
from tests.integration.conftest import REPO, assert_each_input_once, input_lines, read_jsonl, rejected_rows

SPEC = REPO / "pipelines" / "preference_data.yaml"
LIMIT = 3
N = 3  # samples per prompt (the spec's generate n)


def stage_rows(out, name: str) -> list[dict]:
    return [r for p in sorted((out / "stages" / name).glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]


@pytest.fixture(scope="module")
def run(local_ray, tmp_path_factory):
    """One run shared by the tests below: 3 prompts x 3 candidates, the spec as shipped (generate
    candidates -> pairwise judge with position swap -> pairs by win rate -> constitution)."""
    tmp = tmp_path_factory.mktemp("pref")
    tree = yaml.safe_load(SPEC.read_text("utf-8"))
    assert [s["name"] for s in tree["stages"]] == ["generate", "judge", "pairs", "constitution", "export"]
    sets = [
        f"input.path={REPO / 'pipelines' / 'seeds' / 'sft_seed.jsonl'}",
        "shard_size=4",
    ]
    spec = load_spec(SPEC, sets, output=str(tmp / "run"), limit=LIMIT)
    manifest = Runner(spec, str(SPEC)).run()
    return manifest, tmp / "run"


@pytest.mark.slow
def test_every_row_accounted_for_and_judged_pairwise(run):
    manifest, out = run
    stages = {s["name"]: s for s in manifest["stages"]}
    assert all(s["done"] for s in manifest["stages"])
    assert (
        stages["generate"]["rows_in"] == LIMIT and stages["generate"]["rows_out"] == LIMIT
    )  # one row, N candidates
    judged = stage_rows(out, "02-judge")
    assert len(judged) == LIMIT
    for r in judged:
        assert len(r["candidates"]) == N == len(r["candidate_finish_reasons"])
        meta = r["meta"]["judge"]
        whole = sum(x == "stop" for x in r["candidate_finish_reasons"])
        if whole < 2:
            assert r["reject"]["reason"].startswith("no_candidates")
            continue
        c = meta["consistency"]  # every pair of complete candidates judged both ways, or dropped
        assert c["judged"] + c["unreadable"] == whole * (whole - 1) // 2
        assert c["agree"] + c["ties_under_swap"] == c["judged"]
        for k, rate in enumerate(meta["win_rate"]):  # a cut candidate has no score
            assert rate is None or (r["candidate_finish_reasons"][k] == "stop" and 0 <= rate <= 1)
    after_pairs = stage_rows(out, "03-pairs")
    kept = [r for r in after_pairs if not r["reject"]]
    for r in kept:  # the answer is a complete candidate; pair sides are complete
        assert r["meta"]["pairs"]["group_size"] == N and r["messages"][-1]["finish_reason"] == "stop"
        assert all(p["chosen_finish_reason"] == p["rejected_finish_reason"] == "stop" for p in r["pairs"])
    assert all(r["reject"]["reason"].startswith("unscored") for r in after_pairs if r["reject"])
    final = [r for r in stage_rows(out, "04-constitution") if not r["reject"]]
    rejects = rejected_rows(out)
    assert (
        len(final)
        + len(
            [
                r
                for r in rejects
                if r["reject"]["stage"] in ("judge", "pairs", "constitution")
                and not records.discarded_candidate(r)  # a rejected revision: its row went on
            ]
        )
        == LIMIT
    )
    # row by row: each prompt line is in sft/, preference/ only, or rejected/ with its reason
    assert_each_input_once(out, input_lines(REPO / "pipelines" / "seeds" / "sft_seed.jsonl", LIMIT))


@pytest.mark.slow
def test_every_pair_in_preference_is_whole_and_traceable_and_loads_as_trl(run):
    """preference/ holds exactly the pairs the stages made (judge best-vs-worst, accepted revisions),
    each with both sides whole; a prompt that made none says why in its meta (ties, cut or unscored
    candidates, no violation, a rejected revision). The 135M model often makes none at all."""
    import datasets

    _, out = run
    final = [r for r in stage_rows(out, "04-constitution") if not r["reject"]]
    made = [p for r in final for p in r.get("pairs") or []]
    pref = read_jsonl(out / "preference" / "train.jsonl")
    assert len(pref) == len(made)
    assert sorted((x["chosen"][0]["content"], x["rejected"][0]["content"]) for x in pref) == sorted(
        (p["chosen"], p["rejected"]) for p in made
    )
    for p in made:
        assert p["chosen_finish_reason"] in ("stop", "input") and p["rejected_finish_reason"] in (
            "stop",
            "input",
        )
    for r in final:
        if not r.get("pairs"):
            why = r["meta"]["pairs"]
            assert why["group_size"] == N and "consistency" in r["meta"]["judge"]
            assert r["meta"]["constitution"]["outcome"] != "revised"
    sft = read_jsonl(out / "sft" / "train.jsonl")
    assert {r["messages"][-1]["content"] for r in sft} == {r["messages"][-1]["content"] for r in final}
    formats = [("sft", ["messages"])] + ([("preference", ["prompt", "chosen", "rejected"])] if pref else [])
    for fmt, columns in formats:
        d = out / fmt
        if not read_jsonl(d / "train.jsonl"):
            continue
        for builder, file in (("json", "train.jsonl"), ("parquet", "train.parquet")):
            ds = datasets.load_dataset(builder, data_files=str(d / file), split="train")
            assert ds.column_names == columns and ds.num_rows >= 1
        assert datasets.load_dataset(str(d))["train"].column_names == columns  # via the card's header
        assert datasets.load_from_disk(str(d / "dataset")).column_names == columns
        assert "## Spec" in (d / "README.md").read_text("utf-8")


@pytest.mark.slow
def test_repurpose_spec_answers_instructions_with_the_source_text(local_ray, tmp_path):
    """pipelines/repurpose_data.yaml on 2 sources (the English fables), one level, 32 tokens. Certain:
    an instruction is rejected only when the model's reply is empty, too long or a copy of the text."""
    import datasets

    spec_path = REPO / "pipelines" / "repurpose_data.yaml"
    sets = [
        f"input.path={REPO / 'pipelines' / 'seeds' / 'repurpose' / 'repurpose_en.jsonl'}",
        "sampling.max_tokens=32",
        "stages.0.params.levels=[brief]",
    ]
    spec = load_spec(spec_path, sets, output=str(tmp_path / "run"), limit=2)
    Runner(spec, str(spec_path)).run()
    out = tmp_path / "run"
    sources = {
        x["instruction"]
        for x in read_jsonl(REPO / "pipelines" / "seeds" / "repurpose" / "repurpose_en.jsonl")
    }
    sft = read_jsonl(out / "sft" / "train.jsonl")
    assert len(sft) + len(rejected_rows(out)) == 2 and sft
    for r in sft:  # the answer is the source text, verbatim; the instruction is the model's
        assert r["messages"][-1]["content"] in sources and r["messages"][0]["content"] not in sources
    fire = datasets.load_dataset(str(out / "firefly"))["train"]
    qwen = datasets.load_dataset("json", data_files=str(out / "qwen" / "train.jsonl"), split="train")
    assert fire.column_names == ["kind", "input", "target"] and fire.num_rows == len(sft)
    assert qwen.column_names == ["id", "conversations"] and qwen.num_rows == len(sft)
