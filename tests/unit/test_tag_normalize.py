"""tag_normalize: each InsTag step on hand-written tag sets with known answers (embeddings hand-made)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.tag_normalize import TagNormalize, clean


class FakeEmbedder:
    """Hand-made 2-d vectors per tag (normalized), so cosine similarities are known exactly."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        v = np.array([self.vectors[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def tagged(tags: list[str], i: int = 0) -> dict:
    row = records.new_row([{"role": "user", "content": f"instruction {i}"}], {"file": "t", "line": i})
    row["meta"]["instag"] = {"tags": [{"tag": t, "explanation": ""} for t in tags]}
    return row


def stage(run_dir=None, embedder=None, **params) -> TagNormalize:
    only = {"semantic": False, "association": False} | params
    return TagNormalize(
        TagNormalize.Params(**only), StageContext("tag_normalize", 4, run_dir=run_dir), embedder
    )


def tags_of(rows):
    return [r["meta"]["tag_normalize"]["tags"] for r in rows]


def test_clean_is_nfkc_lowercase_and_strips_specials():
    assert clean("  PYTHON-Programming!! ") == "python programming"
    assert clean("ｐｙｔｈｏｎ") == "python"  # full-width Latin -> half-width
    assert clean("旅行规划！") == "旅行规划"  # full-width '!' stripped, CJK kept
    assert clean("C++ / Java") == "c java"


def test_rule_aggregation_merges_case_punctuation_stems_and_width():
    rows = [
        tagged(["Python programming", "旅行规划"], 0),
        tagged(["python programming", "ｐｙｔｈｏｎ programs"], 1),
        tagged(["Python Programs!", "旅行规划！"], 2),
        tagged(["cooking", "cook"], 3),
    ]
    plan = stage().combine([stage().summarize(rows, 0)])
    m = plan["mapping"]
    # "python programming" x2 and "python programs" x2 share the stem key "python program"; tie ->
    # the shorter cleaned form wins
    assert {
        m[t]
        for t in ["Python programming", "python programming", "ｐｙｔｈｏｎ programs", "Python Programs!"]
    } == {"python programs"}
    assert m["旅行规划"] == m["旅行规划！"] == "旅行规划"
    assert m["cooking"] == m["cook"] == "cook"  # Snowball: cooking -> cook; tie on count -> shorter
    assert plan["steps"]["旅行规划！"] == ["rule"] and plan["steps"]["cook"] == []
    assert plan["counts"] == {"python programs": 3, "旅行规划": 2, "cook": 1}  # rows, once per row


def test_rule_aggregation_without_stemming_keeps_word_forms_apart():
    rows = [tagged(["Cooking"], 0), tagged(["cook"], 1)]
    m = stage(stem=False).combine([stage().summarize(rows, 0)])["mapping"]
    assert m == {"Cooking": "cooking", "cook": "cook"}


def test_frequency_filter_counts_after_rule_aggregation():
    rows = [
        tagged(["Math", "rare one"], 0),
        tagged(["math!"], 1),
        tagged(["geometry"], 2),
        tagged(["geometry"], 3),
    ]
    plan = stage(alpha=2).combine([stage().summarize(rows, 0)])
    assert plan["mapping"] == {"Math": "math", "rare one": None, "math!": "math", "geometry": "geometry"}
    assert plan["steps"]["rare one"] == ["frequency"]
    # without rule aggregation "Math" and "math!" are 1 row each and both fall under alpha=2
    plan = stage(alpha=2, rule=False).combine([stage().summarize(rows, 0)])
    assert plan["mapping"] == {"Math": None, "rare one": None, "math!": None, "geometry": "geometry"}


def test_semantic_aggregation_clusters_at_the_cosine_threshold():
    vectors = {"cooking": [1, 0], "culinary": [0.95, 0.31], "recipes": [0.8, 0.6], "sports": [0, 1]}
    # cos(cooking, culinary) = 0.95, cos(cooking, recipes) = 0.8, cos(culinary, recipes) ~ 0.95
    rows = [
        tagged(["cooking"], 0),
        tagged(["cooking", "sports"], 1),
        tagged(["culinary"], 2),
        tagged(["recipes"], 3),
    ]
    emb = FakeEmbedder(vectors)
    plan = stage(embedder=emb, semantic=True, semantic_threshold=0.9).combine([stage().summarize(rows, 0)])
    # average linkage: {cooking, culinary} at 0.95 joins; recipes' mean similarity to them is ~0.875 < 0.9
    assert plan["mapping"] == {
        "cooking": "cooking",
        "culinary": "cooking",
        "recipes": "recipes",
        "sports": "sports",
    }
    assert plan["steps"]["culinary"] == ["semantic"]
    assert sorted(emb.calls[0]) == ["cooking", "culinary", "recipes", "sports"]  # the vocabulary, once
    plan = stage(embedder=FakeEmbedder(vectors), semantic=True, semantic_threshold=0.75).combine(
        [stage().summarize(rows, 0)]
    )
    assert {plan["mapping"][t] for t in ["culinary", "recipes", "cooking"]} == {"cooking"}  # most frequent
    assert plan["mapping"]["sports"] == "sports"


def association_rows():
    # "linear algebra" always comes with "matrices" and vice versa (4 rows); "math" is on 6 rows, with
    # "matrices" on 4 of them: conf(matrices -> math) = 1, conf(math -> matrices) = 4/6
    rows = [tagged(["linear algebra", "matrices", "math"], i) for i in range(4)]
    rows += [tagged(["math"], 4), tagged(["math", "proof"], 5), tagged(["proof"], 6)]
    return rows


def test_association_aggregation_merges_pairs_confident_both_ways():
    rows = association_rows()
    plan = stage(association=True, association_confidence=0.9).combine([stage().summarize(rows, 0)])
    m = plan["mapping"]
    assert m["linear algebra"] == m["matrices"] == "matrices"  # tie at 4 rows -> shorter name
    assert m["math"] == "math" and m["proof"] == "proof"
    assert plan["steps"]["linear algebra"] == ["association"]


def test_association_one_way_merges_an_implied_tag_into_the_frequent_one():
    rows = association_rows()
    plan = stage(association=True, association_confidence=0.9, association_both_ways=False).combine(
        [stage().summarize(rows, 0)]
    )
    assert {plan["mapping"][t] for t in ["linear algebra", "matrices", "math"]} == {"math"}
    assert plan["mapping"]["proof"] == "proof"  # conf(proof -> math) = 1/2


def test_association_needs_min_rows_of_support():
    rows = association_rows()
    plan = stage(association=True, association_confidence=0.9, association_min_rows=5).combine(
        [stage().summarize(rows, 0)]
    )
    assert all(raw == canon for raw, canon in plan["mapping"].items())


def test_audit_files_and_apply(tmp_path):
    rows = [tagged(["Math", "rare"], 0), tagged(["math"], 1), tagged(["!!!"], 2), tagged([], 3)]
    s = stage(run_dir=tmp_path, alpha=2)
    plan = s.combine([s.summarize(rows[:2], 0), s.summarize(rows[2:], 1)])
    vocab = [json.loads(x) for x in (tmp_path / "tags" / "vocabulary.jsonl").read_text().splitlines()]
    mapping = {
        r["raw"]: r
        for r in (json.loads(x) for x in (tmp_path / "tags" / "mapping.jsonl").read_text().splitlines())
    }
    assert vocab == [{"tag": "math", "count": 2, "members": ["Math", "math"]}]
    assert mapping["rare"] == {
        "raw": "rare",
        "canonical": None,
        "step": "frequency",
        "steps": ["frequency"],
        "count": 1,
    }
    assert mapping["!!!"]["canonical"] is None and mapping["!!!"]["step"] == "rule"
    assert mapping["math"]["step"] == "kept" and mapping["Math"]["step"] == "rule"

    out = s.apply(rows[:2], plan, 0) + s.apply(rows[2:], plan, 1)
    assert tags_of(out) == [["math"], ["math"], [], []]
    assert [r["reject"] for r in out] == [None] * 4  # untagged rows are kept by default


def test_reject_untagged_names_the_dropped_tags():
    rows = [tagged(["rare"], 0), tagged(["math"], 1), tagged(["math"], 2)]
    out = stage(alpha=2, reject_untagged=True)(rows)
    assert out[0]["reject"]["reason"] == 'no_tags_after_normalization: all 1 tags dropped: ["rare"]'
    assert [r["reject"] for r in out[1:]] == [None, None]


@pytest.mark.parametrize("source", ["instag", "other"])
def test_source_meta_key(source):
    row = tagged(["x"], 0)
    row["meta"]["other"] = {"tags": [{"tag": "y"}]}
    out = stage(source=source)([row])
    assert tags_of(out) == [["x" if source == "instag" else "y"]]
