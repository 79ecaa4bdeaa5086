"""Judge gates that cannot be passed by silence (issue 15, item 3): structured verdicts, unscored rows,
pairwise judging with position swap over generate's candidates, and pairs that never use a cut text."""

from __future__ import annotations

import pytest

from alignfactory import records
from alignfactory.llm.base import Constraint
from alignfactory.stages.assemble.pairs import Pairs
from alignfactory.stages.base import StageContext
from alignfactory.stages.synthesize.generate import Generate
from alignfactory.stages.synthesize.judge import SCORE_SCHEMA, Judge, parse_score, parse_verdict
from tests.unit.scripted import ScriptedEngine


def row(instr: str, answer: str | None = None, reason: str | None = "stop", **extra) -> dict:
    r = records.new_row([{"role": "user", "content": instr}], {"file": "t.jsonl", "line": 1})
    if answer is not None:
        r["messages"].append(records.assistant(answer, reason))
    r.update(extra)
    return r


def judge(engine, **params) -> Judge:
    return Judge(Judge.Params(**params), StageContext("judge", 2), engine=engine)


def pairs(**params) -> Pairs:
    return Pairs(Pairs.Params(**params), StageContext("pairs", 3))


def generate(engine, **params) -> Generate:
    return Generate(Generate.Params(**params), StageContext("generate", 1), engine=engine)


def shown(prompt: str) -> tuple[str, str]:
    """(response A, response B) as the English pairwise template shows them."""
    a = prompt.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
    b = prompt.split("[Response B]\n")[1].split("\n\nWhich response")[0]
    return a, b


class CutEngine(ScriptedEngine):
    """ScriptedEngine whose samples whose text is in `cut` finish with "length", every time."""

    def __init__(self, cut: set[str], **kw):
        super().__init__(**kw)
        self.cut = cut

    def chat(self, conversations, sampling, seeds=None):
        outs = super().chat(conversations, sampling, seeds)
        for o in outs:
            o.finish_reasons = [
                "length" if t in self.cut else r for t, r in zip(o.texts, o.finish_reasons, strict=True)
            ]
        return outs


# ---- pointwise ---------------------------------------------------------------------------------


def test_null_score_never_passes_a_score_gate_even_with_keep():
    """Fails on the old code: on_unparseable keep + min_score let a row with score None through."""
    engine = ScriptedEngine(rule=lambda conv, k, seed: "I like this answer a lot.", constrains=False)
    out = judge(engine, min_score=4, on_unparseable="keep")([row("Q?", "A.")])
    assert out[0]["reject"] == {
        "stage": "judge",
        "reason": "unscored: helpfulness",
        "raw": "I like this answer a lot.",
    }
    assert out[0]["meta"]["judge"]["score"] is None
    # keep without a gate keeps the row, scoreless (pairs then leaves it out of ranking)
    kept = judge(engine, on_unparseable="keep")([row("Q?", "A.")])
    assert kept[0]["reject"] is None and kept[0]["meta"]["judge"]["score"] is None


def test_one_unreadable_criterion_leaves_no_score():
    def rule(conv, k, seed):
        return "Score: 9" if "Criterion (helpfulness)" in conv[-1]["content"] else "no idea"

    engine = ScriptedEngine(rule=rule, constrains=False)
    kept = judge(engine, criteria=["helpfulness", "honesty"], on_unparseable="keep")([row("Q?", "A.")])
    meta = kept[0]["meta"]["judge"]
    assert meta["scores"] == {"helpfulness": 9, "honesty": None} and meta["score"] is None
    gated = judge(engine, criteria=["helpfulness", "honesty"], min_score=1, on_unparseable="keep")(
        [row("Q?", "A.")]
    )
    assert gated[0]["reject"]["reason"] == "unscored: honesty"


@pytest.mark.parametrize(
    "text, score",
    [
        ("The answer to this question is: 10", None),  # a number in a sentence is not a rating
        ("There are 3 apples, so 5 is wrong.", None),
        ("8", 8),  # a lone integer is the whole reply
        ("**7**", 7),
        ("10.", 10),
        ('{"reason": "clear", "score": 6}', 6),
        ('"reason": "clear", "score": 6', 6),  # a JSON fragment, labeled
        ('{"reason": "<one short sentence>", "score": <1-10>}', None),  # the echoed template
        ("Score: 4", 4),
    ],
)
def test_free_text_score_needs_a_label_or_a_lone_integer(text, score):
    assert parse_score(text) == score


def test_structured_pointwise_asks_for_the_shape_and_reads_only_it():
    def rule(conv, k, seed):
        return '{"reason": "clear", "score": 7}' if "Good." in conv[-1]["content"] else "Score: 7"

    engine = ScriptedEngine(rule=rule)  # reports the constraint as enforced
    out = judge(engine, min_score=5)([row("Q?", "Good."), row("Q2?", "Other.")])
    assert engine.calls[0]["sampling"].constraint == Constraint.json(SCORE_SCHEMA)
    assert Judge.output_constraints(Judge.Params()) == [Constraint.json(SCORE_SCHEMA)]
    meta = out[0]["meta"]["judge"]
    assert out[0]["reject"] is None and meta["score"] == 7 and meta["reasons"]["helpfulness"] == "clear"
    assert meta["parse"] == {"helpfulness": "structured"}
    # a constrained reply that is not the shape is not read as free text
    assert out[1]["reject"]["reason"] == "unscored: helpfulness"
    assert out[1]["meta"]["judge"]["parse"] == {"helpfulness": "structured_invalid"}
    free = judge(ScriptedEngine(rule=rule, constrains=False))([row("Q2?", "Other.")])
    assert (
        free[0]["meta"]["judge"]["parse"]["helpfulness"] == "free_text: scripted engine set to not constrain"
    )
    assert free[0]["meta"]["judge"]["score"] == 7


def test_incomplete_verdict_is_unreadable_after_one_retry():
    engine = CutEngine(
        {'{"reason": "fine", "score": 9}'}, rule=lambda conv, k, seed: '{"reason": "fine", "score": 9}'
    )
    out = judge(engine, min_score=5, max_tokens=40)([row("Q?", "A.")])
    assert out[0]["reject"]["reason"] == "unscored: helpfulness"
    assert out[0]["meta"]["judge"]["parse"]["helpfulness"] == "truncated: finish_reason 'length'"
    assert engine.max_tokens_seen == [40, 80]  # on_truncated retry: once, at twice the budget
    no_retry = CutEngine(
        {'{"reason": "fine", "score": 9}'}, rule=lambda c, k, s: '{"reason": "fine", "score": 9}'
    )
    judge(no_retry, min_score=5, max_tokens=40, on_truncated="reject")([row("Q?", "A.")])
    assert no_retry.max_tokens_seen == [40]


# ---- pairwise ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Verdict: a tie", "tie"),  # old code read the article as "A"
        ("Verdict: It's a tie.", "tie"),
        ("Verdict: it is a draw", "tie"),
        ("Verdict: A", "A"),
        ("Verdict: a", "A"),
        ("Verdict: Response B", "B"),
        ("tie", "tie"),
    ],
)
def test_free_text_verdicts(text, verdict):
    assert parse_verdict(text) == verdict


def cands_row(q: str, texts: list[str], reasons: list[str] | None = None) -> dict:
    return row(q, candidates=texts, candidate_finish_reasons=reasons or ["stop"] * len(texts))


def test_unreadable_comparison_drops_only_itself_and_is_counted():
    """Fails on the old code: one unparseable verdict rejected the whole row."""

    def rule(conv, k, seed):
        a, b = shown(conv[-1]["content"])
        if a == "bad" and b != "good":  # "bad" shown first against "mid": an unreadable reply
            return "hmm"
        return "Verdict: A" if len(a) > len(b) else "Verdict: B"  # longer wins

    out = judge(ScriptedEngine(rule=rule, constrains=False), mode="pairwise")(
        [cands_row("Q?", ["good", "middle", "bad"])]
    )
    r = out[0]
    meta = r["meta"]["judge"]
    assert r["reject"] is None
    assert meta["consistency"] == {"judged": 2, "agree": 2, "ties_under_swap": 0, "unreadable": 1}
    dropped = [c for c in meta["comparisons"] if c["verdict"] is None]
    assert [(c["a"], c["b"], c["ab"], c["ba"]) for c in dropped] == [(1, 2, "A", None)]
    assert meta["win_rate"] == [0.5, 1.0, 0.0] and meta["unscored_candidates"] == 0
    assert {(p["chosen"], p["rejected"]) for p in r["pairs"]} == {("middle", "good"), ("good", "bad")}
    assert all(p["chosen_finish_reason"] == p["rejected_finish_reason"] == "stop" for p in r["pairs"])


def test_flip_under_swap_is_a_tie_and_counted():
    engine = ScriptedEngine(rule=lambda conv, k, seed: "A")  # always the first position
    out = judge(engine, mode="pairwise")([cands_row("Q?", ["one", "two"])])
    meta = out[0]["meta"]["judge"]
    assert engine.calls[0]["sampling"].constraint == Constraint.choice(("A", "B", "tie"))
    assert meta["consistency"] == {"judged": 1, "agree": 0, "ties_under_swap": 1, "unreadable": 0}
    assert (
        meta["comparisons"][0]["verdict"] == "tie" and meta["comparisons"][0]["parse"] == ["structured"] * 2
    )
    assert out[0]["pairs"] == [] and meta["win_rate"] == [0.5, 0.5]


def test_pairwise_structured_invalid_and_all_unreadable_rejects_row():
    engine = ScriptedEngine(rule=lambda conv, k, seed: "Verdict: A")  # constrained, yet not the choice
    out = judge(engine, mode="pairwise")([cands_row("Q?", ["one", "two"])])
    assert out[0]["reject"]["reason"] == "unscored: no readable comparison (1 unreadable)"
    assert out[0]["reject"]["raw"] == "Verdict: A\n---\nVerdict: A"
    kept = judge(engine, mode="pairwise", on_unparseable="keep")([cands_row("Q?", ["one", "two"])])
    assert kept[0]["reject"] is None and kept[0]["meta"]["judge"]["win_rate"] == [None, None]


def test_incomplete_candidates_are_left_out_of_judging_and_counted():
    engine = ScriptedEngine(rule=lambda conv, k, seed: "tie")
    r = cands_row("Q?", ["one", "cut off mid", "three", "no reason"], ["stop", "length", "stop", None])
    out = judge(engine, mode="pairwise")([r])
    shown_texts = {t for c in engine.calls[0]["conversations"] for t in shown(c[-1]["content"])}
    assert shown_texts == {"one", "three"}
    meta = out[0]["meta"]["judge"]
    assert meta["incomplete_candidates"] == 2 and meta["win_rate"] == [0.5, None, 0.5, None]
    lonely = judge(engine, mode="pairwise")([cands_row("Q?", ["one", "cut"], ["stop", "length"])])
    assert (
        lonely[0]["reject"]["reason"].startswith("no_candidates")
        and "(1 of 2 complete)" in lonely[0]["reject"]["reason"]
    )


# ---- generate candidates -> judge pairwise -> pairs --------------------------------------------


def test_generate_candidates_writes_one_row_with_texts_and_finish_reasons():
    engine = CutEngine({"cut"}, script={"Q?": ["first", "cut", "third"]})
    src = row("Q?")
    out = generate(engine, n=3, candidates=True, on_truncated="reject")([src])
    assert len(out) == 1 and out[0] is src  # same conversation: the row itself, columns added
    assert out[0]["messages"] == [{"role": "user", "content": "Q?"}]
    assert out[0]["candidates"] == ["first", "cut", "third"]
    assert out[0]["candidate_finish_reasons"] == ["stop", "length", "stop"]
    assert out[0]["meta"]["generate"]["n"] == 3 and out[0]["meta"]["generate"]["retried"] == []
    once = ScriptedEngine(script={"Q?": "same"}, truncated_once={"Q?"})  # cut unless the budget grew
    again = generate(once, n=2, candidates=True, max_tokens=16)([row("Q?")])
    assert again[0]["candidate_finish_reasons"] == ["stop", "stop"] and once.max_tokens_seen == [16, 32]
    assert again[0]["meta"]["generate"]["retried"] == [0, 1]
    sys = generate(ScriptedEngine(script={"Q?": ["a", "b"]}), n=2, candidates=True, system="Be brief.")(
        [row("Q?")]
    )
    assert sys[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sys[0]["lineage"] == {"parents": [src["id"]], "stage": "generate"}
    rows = generate(engine, n=3, on_truncated="reject")(
        [row("Q?")]
    )  # without candidates: n rows, reason on each message
    assert [records.response_finish_reason(r) for r in rows] == ["stop", "length", "stop"]


def test_shipped_chain_generate_candidates_judge_pairwise_pairs():
    def verdict(conv, k, seed):
        a, b = shown(conv[-1]["content"])
        return "A" if len(a) > len(b) else "B"  # the longer answer wins, in either position

    gen = ScriptedEngine(script={"Q?": ["short", "a much longer answer", "medium one"], "R?": ["x", "y"]})
    rows = generate(gen, n=3, candidates=True)([row("Q?")])
    rows = judge(ScriptedEngine(rule=verdict), mode="pairwise")(rows)
    assert rows[0]["meta"]["judge"]["win_rate"] == [0.0, 1.0, 0.5]
    out = pairs(policies=["score"], min_margin=0.5)(rows)
    assert len(out) == 1
    head = out[0]
    assert head["reject"] is None and records.response(head) == "a much longer answer"
    assert records.response_finish_reason(head) == "stop" and "candidates" not in head
    assert head["lineage"] == {"parents": [rows[0]["id"]], "stage": "pairs"}
    assert head["meta"]["pairs"]["candidate"] == 1
    assert head["pairs"] == [
        {
            "chosen": "a much longer answer",
            "rejected": "short",
            "chosen_finish_reason": "stop",
            "rejected_finish_reason": "stop",
            "stage": "pairs",
            "policy": "score:meta.judge.win_rate",
            "chosen_score": 1.0,
            "rejected_score": 0.0,
            "margin": 1.0,
            "length_ratio": round(len("a much longer answer") / len("short"), 3),
        }
    ]
    every = pairs(policies=["score"], min_margin=0.5, keep="all")(
        judge(ScriptedEngine(rule=verdict), mode="pairwise")(generate(gen, n=3, candidates=True)([row("Q?")]))
    )
    assert sorted(records.response(r) for r in every) == ["a much longer answer", "medium one", "short"]


def test_pairs_candidates_unscored_or_incomplete_never_ranked():
    r = cands_row("Q?", ["a", "b", "c"], ["stop", "length", "stop"])
    r["meta"]["judge"] = {"win_rate": [None, 1.0, None]}  # only the cut one has a score
    out = pairs(policies=["score"], min_margin=0.5)([r])
    assert (
        out[0] is r
        and r["reject"]["reason"]
        == "unscored: no candidate has a readable score (2 unscored, 1 incomplete of 3)"
    )
    assert r["meta"]["pairs"]["unscored"] == 2 and r["meta"]["pairs"]["incomplete"] == 1
    tie = cands_row("Q?", ["a", "bb"])
    tie["meta"]["judge"] = {"win_rate": [0.5, 0.5]}
    kept = pairs(policies=["score"], min_margin=0.5)([tie])
    assert (
        records.response(kept[0]) == "a" and kept[0]["pairs"] == [] and kept[0]["meta"]["pairs"]["ties"] == 1
    )


def test_pairs_incomplete_sibling_never_enters_a_pair():
    """Fails on the old code: the cut sibling (lowest score) became the rejected side."""
    sibs = [row("Q?", "fine", "stop"), row("Q?", "ok", "stop"), row("Q?", "cut mid", "length")]
    for r, s in zip(sibs, [9, 5, 1], strict=True):
        r["meta"]["judge"] = {"score": s}
    out = pairs(policies=["score", "carried"], min_margin=1)(sibs)
    head = out[0]
    assert [(p["chosen"], p["rejected"]) for p in head["pairs"]] == [("fine", "ok")]
    assert head["meta"]["pairs"]["incomplete"] == 1
    # a carried pair with a cut (or unrecorded) side is dropped, counted
    rev = row("P?", "revised", "stop")
    rev["pairs"] = [
        {
            "chosen": "revised",
            "rejected": "orig",
            "chosen_finish_reason": "stop",
            "rejected_finish_reason": "length",
        },
        {"chosen": "revised", "rejected": "other"},
    ]
    got = pairs(policies=["carried"])([rev])
    assert got[0]["pairs"] == [] and got[0]["meta"]["pairs"]["incomplete_pairs"] == 2


def test_pairs_unscored_siblings_left_out_and_counted():
    sibs = [row("Q?", "a"), row("Q?", "b"), row("Q?", "c")]
    for r, s in zip(sibs, [None, 8, 3], strict=True):
        r["meta"]["judge"] = {"score": s}
    out = pairs(policies=["score"], min_margin=1)(sibs)
    head = out[1]
    assert head["pairs"][0]["chosen"] == "b" and head["pairs"][0]["rejected"] == "c"
    assert head["meta"]["pairs"]["unscored"] == 1


def test_online_dpo_judge_scorer_reads_the_templates_json_shape():
    """Fails on the old code: its regex wanted "Score: N", the template now asks for JSON."""
    from alignfactory.train.scorers import Scorers

    replies = iter(['{"reason": "ok", "score": 8}', "The answer to this question is: 10"])
    s = Scorers("judge", judge_model="scripted")
    s._judge_engine = ScriptedEngine(rule=lambda conv, k, seed: next(replies))
    scores, _ = s.score([{"prompt": [{"role": "user", "content": "q"}]}], [["x", "y"]])
    assert scores == [[0.8, None]]
