"""Curation end to end on a real local Ray cluster and the real embedded model:
read -> dedup -> instag -> tag_normalize -> select -> evolve -> generate -> export, 8 rows in 3 shards.

SmolLM2-135M is weak, so the assertions hold whatever it says: unparseable tags and eliminated
evolutions are rejected with reasons and still accounted for; at least one row must get tags.
"""

from __future__ import annotations

import json

import pytest
import yaml

from alignfactory.run import Runner
from alignfactory.spec import load_spec
from tests.integration.conftest import exported, read_jsonl, rejected_rows, write_jsonl

SEEDS = [
    "Write a polite email to my landlord asking for the kitchen faucet to be repaired.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "用一句话解释什么是光合作用。",
    "Give three tips for learning a new language.",
    "第一次去日本自由行，一共七天，预算有限，行程怎么安排比较合理？",
    "Explain the difference between a list and a tuple in Python.",
    "如何用简单的话向孩子解释地球为什么是圆的？",
    "Write a polite email to my landlord asking for the kitchen faucet to be repaired.",  # duplicate
]

SPEC = {
    "name": "curation",
    "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 16},
    "seed": 0,
    "shard_size": 3,
    "stages": [
        {"name": "dedup"},
        {
            "name": "instag",
            "params": {"max_tokens": 48, "retries": 1},
            "resources": {"batch_size": 8, "concurrency": 1, "num_cpus": 1},
        },
        {
            "name": "tag_normalize",
            "params": {"alpha": 1, "semantic_threshold": 0.85},
            "resources": {"num_cpus": 0.5},
        },
        {
            "name": "select",
            "params": {"fraction": 0.75, "weights": {"diversity": 1, "complexity": 1, "richness": 0.5}},
            "resources": {"num_cpus": 0.5},
        },
        {
            "name": "evolve",
            "params": {"rounds": 1, "max_tokens": 32, "answer_max_tokens": 16},
            "resources": {"batch_size": 8, "concurrency": 1, "num_cpus": 0.9},
        },
        {"name": "generate", "params": {"max_tokens": 8}, "resources": {"batch_size": 8, "num_cpus": 0.9}},
        {"name": "export"},
    ],
}


@pytest.fixture(scope="module")
def curated(local_ray, tmp_path_factory):
    """One real run shared by every test of this module."""
    tmp = tmp_path_factory.mktemp("curation")
    seeds = write_jsonl(tmp / "seeds.jsonl", [{"instruction": s} for s in SEEDS])
    spec_path = tmp / "curation.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC | {"input": {"path": str(seeds)}}, allow_unicode=True))
    spec = load_spec(spec_path, [], output=str(tmp / "run"))
    manifest = Runner(spec, str(spec_path)).run()
    return manifest, tmp / "run"


def stage_rows(run_dir, name: str) -> list[dict]:
    (folder,) = (run_dir / "stages").glob(f"*-{name}")
    return [r for p in sorted(folder.glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]


def test_tag_files_and_canonical_tags(curated):
    _, out = curated
    vocab = read_jsonl(out / "tags" / "vocabulary.jsonl")
    mapping = {m["raw"]: m for m in read_jsonl(out / "tags" / "mapping.jsonl")}
    tagged = [r for r in stage_rows(out, "instag") if not r["reject"]]
    assert tagged, "the model never produced a parseable tag list"
    raw_tags = {t["tag"] for r in tagged for t in r["meta"]["instag"]["tags"]}
    assert raw_tags == set(mapping)  # every raw tag is audited
    vocabulary = {v["tag"]: v for v in vocab}
    for raw, m in mapping.items():
        assert m["canonical"] is None or raw in vocabulary[m["canonical"]]["members"]
        assert m["step"] in ("kept", "rule", "frequency", "semantic", "association")
    normalized = stage_rows(out, "tag_normalize")
    assert len(normalized) == len(tagged)
    for row in normalized:
        for tag in row["meta"]["tag_normalize"]["tags"]:
            assert tag in vocabulary  # every canonical tag on a row is in the vocabulary
        expect = {mapping[t["tag"]]["canonical"] for t in row["meta"]["instag"]["tags"]} - {None}
        assert set(row["meta"]["tag_normalize"]["tags"]) == expect
    counts = {t: sum(t in r["meta"]["tag_normalize"]["tags"] for r in normalized) for t in vocabulary}
    assert counts == {t: v["count"] for t, v in vocabulary.items()}


def test_every_row_is_accounted_for_with_reasons(curated):
    manifest, out = curated
    rejects = rejected_rows(out)
    assert all(r["reject"]["stage"] and r["reject"]["reason"] for r in rejects)
    order = [s["name"] for s in manifest["stages"]]
    for prev, name in zip(
        order, order[1:], strict=False
    ):  # each stage: input row -> output row, child, or reject
        inputs = [r for r in stage_rows(out, prev) if not r["reject"]]
        outputs = stage_rows(out, name) if name != "export" else None
        if outputs is None:
            continue
        ids = {r["id"] for r in outputs} | {p for r in outputs for p in r["lineage"]["parents"]}
        assert all(r["id"] in ids for r in inputs), name
    by_stage = {}
    for r in rejects:
        by_stage.setdefault(r["reject"]["stage"], []).append(r["reject"]["reason"])
    assert by_stage["dedup"] == [by_stage["dedup"][0]] and by_stage["dedup"][0].startswith("duplicate of ")
    assert all(x.startswith("unparseable: ") for x in by_stage.get("instag", []))
    assert all(x.startswith("eliminated: ") for x in by_stage.get("evolve", []))
    selected = [r for r in stage_rows(out, "select") if not r["reject"]]
    assert len(selected) + len(by_stage.get("select", [])) == len(stage_rows(out, "tag_normalize"))
    assert all(x.startswith("not_selected: budget ") for x in by_stage.get("select", []))
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["read"]["rows_in"] == len(SEEDS) and all(s["done"] for s in manifest["stages"])
    assert len(exported(out)) == stages["generate"]["rows_out"]


def test_selection_and_evolution_metadata(curated):
    _, out = curated
    selected = [r for r in stage_rows(out, "select") if not r["reject"]]
    assert selected and all(r["meta"]["select"]["phase"] in ("coverage", "score") for r in selected)
    assert sorted(r["meta"]["select"]["rank"] for r in selected) == list(range(len(selected)))
    for row in stage_rows(out, "evolve"):
        meta = row["meta"]["evolve"]
        if row["reject"] or meta.get("evolved"):  # an evolution: a child of a selected row
            assert row["lineage"]["stage"] == "evolve" and row["lineage"]["round"] == 1
            assert row["lineage"]["parents"][0] in {r["id"] for r in selected}
            assert meta["raw"] is not None
        else:
            assert json.dumps(meta["history"]) and meta["evolved"] is False
