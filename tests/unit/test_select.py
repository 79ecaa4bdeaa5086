"""select: the InsTag sampler and the weighted Qwen2 criteria on hand-written tag sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.select import RATING, Select, judge_score
from tests.unit.scripted import ScriptedEngine, last_user

TAGS = [["a"], ["a", "b", "c"], ["b", "d"], ["e"], ["a", "b"], []]


def tagged(tags: list[str], i: int) -> dict:
    row = records.new_row([{"role": "user", "content": f"instruction {i}"}], {"file": "t", "line": i})
    row["meta"]["tag_normalize"] = {"tags": tags}
    return row


def rows_of(tag_lists=TAGS):
    return [tagged(t, i) for i, t in enumerate(tag_lists)]


def select(engine=None, embedder=None, **params) -> Select:
    return Select(Select.Params(**params), StageContext("select", 5), engine=engine, embedder=embedder)


def kept_lines(rows):
    return [r["source"]["line"] for r in rows if not r["reject"]]


def test_complexity_first_covers_tags_then_fills_by_complexity():
    out = select(budget=4)(rows_of())
    assert kept_lines(out) == [1, 2, 3, 4]
    meta = {r["source"]["line"]: r["meta"]["select"] for r in out}
    # coverage pass in tag-count order: row 1 (a,b,c), row 2 adds d, row 4 adds nothing, row 3 adds e
    assert [(meta[i]["rank"], meta[i]["phase"]) for i in (1, 2, 3)] == [
        (0, "coverage"),
        (1, "coverage"),
        (2, "coverage"),
    ]
    # then the fill: every tag covered (diversity 0), row 4 has the most tags (2 of max 3)
    assert meta[4]["phase"] == "score" and meta[4]["scores"] == {
        "diversity": 0.0,
        "complexity": 0.6667,
        "score": 0.3333,
    }
    assert meta[0]["scores"] == {"diversity": 0.0, "complexity": 0.3333, "score": 0.1667}
    reasons = {r["source"]["line"]: r["reject"]["reason"] for r in out if r["reject"]}
    assert reasons == {
        0: "not_selected: budget 4 of 6 rows; diversity 0.00, complexity 0.33, score 0.17",
        5: "not_selected: budget 4 of 6 rows; diversity 0.00, complexity 0.00, score 0.00",
    }


def test_budget_smaller_than_coverage_keeps_the_most_complex():
    assert kept_lines(select(budget=2)(rows_of())) == [1, 2]


def test_fraction_budget_rounds_up():
    assert len(kept_lines(select(fraction=0.5)(rows_of()[:5]))) == 3  # ceil(2.5)


def test_diversity_only_greedy_without_coverage_pass():
    out = select(budget=3, complexity_first=False, weights={"diversity": 1, "complexity": 0})(rows_of())
    # all tagged rows start at diversity 1 -> row 0 (first); then a covered: row 2 (b,d) and row 3 (e)
    # are 1.0, row 1 is 2/3 -> row 2; then row 3 (e) is 1.0
    ranks = {r["source"]["line"]: r["meta"]["select"]["rank"] for r in out if not r["reject"]}
    assert ranks == {0: 0, 2: 1, 3: 2}


class FakeEmbedder:
    def __init__(self, vectors):
        self.vectors = vectors

    def encode(self, texts):
        v = np.array([self.vectors[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_semantic_richness_picks_the_farthest_from_the_chosen():
    vectors = {
        "instruction 0": [1, 0],
        "instruction 1": [0.99, 0.1],
        "instruction 2": [0, 1],
        "instruction 3": [0.7, 0.7],
    }
    rows = rows_of([["x"]] * 4)
    weights = {"diversity": 0, "complexity": 0, "richness": 1}
    out = select(budget=3, complexity_first=False, weights=weights, embedder=FakeEmbedder(vectors))(rows)
    ranks = {r["source"]["line"]: r["meta"]["select"]["rank"] for r in out if not r["reject"]}
    assert ranks == {0: 0, 2: 1, 3: 2}  # 0 first (ties), 2 is orthogonal to it, then 3 (cos .707 to both)
    rejected = next(r for r in out if r["reject"])
    assert rejected["source"]["line"] == 1
    assert rejected["meta"]["select"]["scores"]["richness"] == pytest.approx(1 - 0.995, abs=2e-3)


def test_llm_completeness_judge_scores_and_raw_text():
    # free text (an engine that cannot constrain): the reader, and the parse path recorded
    replies = {
        "instruction 0": "7",
        "instruction 1": "Score: 9/10",
        "instruction 2": "I cannot rate that.",
        "instruction 3": "3",
    }
    engine = ScriptedEngine(
        rule=lambda conv, k, seed: replies[last_user(conv).rsplit(": ", 1)[-1]], constrains=False
    )
    rows = rows_of([["x"]] * 4)
    out = select(
        engine=engine,
        budget=2,
        complexity_first=False,
        weights={"diversity": 0, "complexity": 0, "completeness": 1},
    )(rows)
    assert kept_lines(out) == [0, 1]
    meta = {r["source"]["line"]: r["meta"]["select"] for r in out}
    assert meta[1]["rank"] == 0 and meta[1]["scores"]["completeness"] == 0.9
    assert meta[2]["scores"]["completeness"] == 0.0  # no number: no rating, below every rating
    assert meta[2]["raw"] == {"completeness": "I cannot rate that."}
    assert meta[2]["unrated"] == {"completeness": "unparseable"} and "unrated" not in meta[1]
    assert meta[1]["parse"] == {"completeness": "free_text: scripted engine set to not constrain"}
    assert len(engine.calls) == 1 and engine.calls[0]["sampling"].max_tokens == 8
    assert engine.calls[0]["sampling"].constraint == RATING  # asked for the shape all the same
    assert "Instruction: instruction 3" in engine.calls[0]["conversations"][3][0]["content"]


def test_llm_difficulty_is_averaged_into_complexity():
    engine = ScriptedEngine(
        rule=lambda conv, k, seed: "10" if conv[0]["content"].endswith("instruction 1") else "2"
    )
    out = select(
        engine=engine, budget=1, complexity_first=False, difficulty_llm=True, weights={"diversity": 0}
    )(rows_of([["a", "b"], ["a"]]))
    # complexity: row 0 (2/2 + 0.2) / 2 = 0.6, row 1 (1/2 + 1.0) / 2 = 0.75
    assert kept_lines(out) == [1]
    assert out[0]["meta"]["select"]["scores"]["complexity"] == 0.6


@pytest.mark.parametrize(
    "text, score",
    [
        ("8", 0.8),
        ("Rating: 10/10", 1.0),
        ("I'd say 3 out of 10", 0.3),
        ("1.5", None),
        ("none", None),
        ("12", None),
        ("Score: 7.", 0.7),
        ("On a scale of 1 to 10, I'd say 7", None),  # several numbers: not read as the first (1)
        ("8/10, maybe 9/10", None),
    ],
)
def test_judge_score(text, score):
    assert judge_score(text) == score


def test_shards_give_the_same_selection_as_one_list():
    s = select(budget=4)
    rows = rows_of()
    plan = s.combine([s.summarize(rows[:3], 0), s.summarize(rows[3:], 1)])
    out = s.apply(rows[:3], plan, 0) + s.apply(rows[3:], plan, 1)
    assert kept_lines(out) == kept_lines(select(budget=4)(rows_of()))
    with pytest.raises(ValueError, match="select: row 0:0 is"):
        s.apply(rows[3:], plan, 0)  # rows of another shard: ids do not match the plan


def test_all_weights_zero_is_an_error():
    with pytest.raises(ValueError, match="at least one weight"):
        select(weights={"diversity": 0, "complexity": 0})


def completeness_only(engine, budget=2, **params) -> Select:
    weights = {"diversity": 0, "complexity": 0, "completeness": 1}
    return select(engine=engine, budget=budget, complexity_first=False, weights=weights, **params)


def test_llm_ratings_ask_for_their_shape_and_read_it_strictly():
    # constrained: the reply must be one of "1".."10"; anything else from a constraining engine is no rating
    replies = {
        "instruction 0": "4",
        "instruction 1": "9",
        "instruction 2": "Score: 9/10",
        "instruction 3": "2",
    }
    engine = ScriptedEngine(rule=lambda conv, k, seed: replies[last_user(conv).rsplit(": ", 1)[-1]])
    stage = completeness_only(engine)
    out = stage(rows_of([["x"]] * 4))
    assert Select.output_constraints(stage.params) == [RATING] == [engine.calls[0]["sampling"].constraint]
    assert RATING.kind == "choice" and RATING.choices == tuple(str(i) for i in range(1, 11))
    assert Select.output_constraints(Select.Params()) == []  # no LLM rating, no constraint
    assert kept_lines(out) == [0, 1]
    meta = {r["source"]["line"]: r["meta"]["select"] for r in out}
    assert meta[1]["parse"] == {"completeness": "structured"} and meta[1]["scores"]["completeness"] == 0.9
    assert meta[2]["unrated"] == {"completeness": "unparseable"} and meta[2]["scores"]["completeness"] == 0.0


def test_an_unreadable_or_cut_rating_never_counts_as_a_good_score():
    # Fails on the old code: a reply with no number counted 0.5 and beat a readable 3; a cut reply's
    # partial "Score: 9" counted 0.9. Now both count 0, and the cut one was asked again at 2x budget.
    replies = {
        "instruction 0": "3",
        "instruction 1": "no idea",
        "instruction 2": "Score: 9",
        "instruction 3": "2",
    }
    cut = {render_prompt("instruction 2")}
    engine = ScriptedEngine(
        rule=lambda conv, k, seed: replies[last_user(conv).rsplit(": ", 1)[-1]],
        truncated=cut,
        constrains=False,
    )
    out = completeness_only(engine)(rows_of([["x"]] * 4))
    assert kept_lines(out) == [0, 3]  # the two readable ratings, 3 and 2, over "no idea" and the cut one
    meta = {r["source"]["line"]: r["meta"]["select"] for r in out}
    assert meta[1]["scores"]["completeness"] == 0.0 and meta[1]["unrated"] == {"completeness": "unparseable"}
    assert meta[2]["scores"]["completeness"] == 0.0
    assert meta[2]["unrated"] == {"completeness": "truncated: finish_reason 'length'"}
    assert meta[2]["parse"]["completeness"].endswith("(retried at 2x max_tokens)")
    assert [c["sampling"].max_tokens for c in engine.calls] == [8, 16]  # one retry, cut ones only
    assert len(engine.calls[1]["conversations"]) == 1
    stage = completeness_only(ScriptedEngine(rule=engine.rule, truncated=cut, constrains=False))
    plan = stage.combine([stage.summarize(rows_of([["x"]] * 4), 0)])
    assert plan["unrated"] == {"completeness": 2}  # counted


def test_a_rating_cut_once_is_read_from_its_retry():
    replies = {"instruction 0": "3", "instruction 1": "9"}
    engine = ScriptedEngine(
        rule=lambda conv, k, seed: replies[last_user(conv).rsplit(": ", 1)[-1]],
        truncated_once={render_prompt("instruction 1")},
    )
    out = completeness_only(engine, budget=1)(rows_of([["x"]] * 2))
    assert kept_lines(out) == [1] and out[1]["meta"]["select"]["scores"]["completeness"] == 0.9
    out = completeness_only(
        ScriptedEngine(rule=engine.rule, truncated_once=engine.truncated_once),
        budget=1,
        on_truncated="reject",
    )(rows_of([["x"]] * 2))
    assert kept_lines(out) == [0]  # no retry: the cut rating is no rating


def render_prompt(instruction: str) -> str:
    from alignfactory.stages.base import render

    return render("select/completeness.jinja", instruction=instruction).strip()


# ---- multi-turn rows: rated and embedded by every user turn ----------------------------------------


def multi_turn(name_tags: dict[str, list[str]]) -> list[dict]:
    from tests.unit.test_dedup import multi_turn_rows

    rows = multi_turn_rows()
    out = []
    for name, tags in name_tags.items():
        r = rows[name]
        r["meta"]["tag_normalize"] = {"tags": tags}
        out.append(r)
    return out


class BagOfWords:
    """A deterministic embedder: word counts hashed into 64 dims, L2-normalized; records its inputs."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += texts
        v = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                v[i, sum(map(ord, w)) % 64] += 1
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_multi_turn_rows_are_embedded_and_rated_by_all_their_user_turns():
    # Fails on the old code: both conversations ending in "thanks" were embedded as "thanks"
    # (richness 0 for the second) and rated as "thanks".
    rows = multi_turn({"bloom_thanks": ["x"], "limerick_thanks": ["x"], "hamlet_continue": ["x"]})
    emb = BagOfWords()
    engine = ScriptedEngine(rule=lambda conv, k, seed: "5")
    weights = {"diversity": 0, "complexity": 0, "richness": 1, "completeness": 0.001}
    out = select(engine=engine, embedder=emb, budget=3, complexity_first=False, weights=weights)(rows)
    assert emb.seen[0] == ("Explain how a bloom filter works and when it gives false positives.\n\nthanks")
    prompts = [c[0]["content"] for c in engine.calls[0]["conversations"]]
    assert "Explain how a bloom filter works" in prompts[0] and prompts[0].rstrip().endswith("thanks")
    assert "limerick" in prompts[1]
    meta = {r["source"]["file"]: r["meta"]["select"] for r in out}
    assert meta["limerick_thanks"]["scores"]["richness"] > 0.5  # not a copy of bloom_thanks


def test_a_single_turn_row_is_embedded_as_its_instruction():
    emb = BagOfWords()
    select(embedder=emb, budget=1, weights={"richness": 1})(rows_of([["x"]] * 2))
    assert emb.seen == ["instruction 0", "instruction 1"]
