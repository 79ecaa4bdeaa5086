"""judge, constitution, repurpose and pairs on plain lists with the scripted engine."""

from __future__ import annotations

import pytest

from alignfactory import records
from alignfactory.stages.assemble.pairs import Pairs
from alignfactory.stages.base import StageContext
from alignfactory.stages.synthesize.constitution import Constitution, clean_reply
from alignfactory.stages.synthesize.judge import Judge, parse_reason, parse_score, parse_verdict, reconcile
from alignfactory.stages.synthesize.repurpose import Repurpose, parse_dialogue, parse_instruction
from tests.unit.scripted import ScriptedEngine


def row(instr: str, answer: str | None = None, **extra) -> dict:
    msgs = [{"role": "user", "content": instr}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    r = records.new_row(msgs, {"file": "t.jsonl", "line": 1})
    r.update(extra)
    return r


def reasons(rows):
    return [r["reject"]["reason"] if r["reject"] else None for r in rows]


def judge(engine, **params) -> Judge:
    return Judge(Judge.Params(**params), StageContext("judge", 2), engine=engine)


# ---- judge parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, score",
    [
        ("Reason: clear and correct.\nScore: 8", 8),
        ("**Score:** 7/10", 7),
        ("I'd rate it [[6]].", 6),
        ('{"score": 9, "reason": "good"}', 9),
        ('```json\n{"rating": 4}\n```', 4),
        ("The answer is weak. 3 out of 10.", 3),
        ("理由：回答准确。\n评分：9", 9),
        ("得分: 5分", 5),
        ("这个回答还可以，我给7分。", 7),
        ("Score: <an integer from 1 to 10>\nScore: 2", 2),  # echoed template, then the real one
        ("Score: 1 to 10", None),  # only the scale, echoed
        ("Score: 11", None),  # out of range
        ("Score: 0", None),
        ("It is a fine answer.", None),
        ("", None),
        ("Score: 7.5", 7.5),
    ],
)
def test_parse_score_messy_outputs(text, score):
    assert parse_score(text) == score


def test_parse_reason_labeled_or_rest_of_text():
    assert parse_reason("Reason: it answers the question.\nScore: 8") == "it answers the question."
    assert parse_reason("理由：不够具体。\n评分：4") == "不够具体。"
    assert parse_reason("Too vague overall.\nScore: 3") == "Too vague overall."


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Reason: A is clearer.\nVerdict: A", "A"),
        ("Verdict: **B**", "B"),
        ("Verdict: tie", "tie"),
        ("[[B]]", "B"),
        ("Response A is better because it is concise.", "A"),
        ("理由：回答B更完整。\n结论：B", "B"),
        ("结论：平局", "tie"),
        ("回答A更好。", "A"),
        ("B", "B"),
        ("Verdict: <A, B or tie>\nVerdict: A", "A"),
        ("Both have merits.", None),
        ("", None),
    ],
)
def test_parse_verdict_messy_outputs(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    "ab, ba, out",
    [
        ("A", "B", "A"),  # a first: A wins; b first: B (= a) wins -> consistent
        ("B", "A", "B"),
        ("A", "A", "tie"),  # position bias: always the first -> tie
        ("B", "B", "tie"),
        ("tie", "tie", "tie"),
        ("A", "tie", "tie"),
        (None, "A", None),
        ("A", None, None),
    ],
)
def test_reconcile_position_swap(ab, ba, out):
    assert reconcile(ab, ba) == out


# ---- judge stage --------------------------------------------------------------------------------


def test_pointwise_scores_reasons_and_gate_en_zh():
    def rule(conv, k, seed):
        text = conv[-1]["content"]
        if "评分标准" in text:
            return "理由：清楚。\n评分：9分"
        return "Reason: too short.\nScore: 3" if "Ok." in text else "Reason: complete.\nScore: 8/10"

    rows = [
        row("Explain rain.", "Rain forms when droplets grow heavy."),
        row("Explain snow.", "Ok."),
        row("解释一下雨。", "雨是水汽凝结成的水滴落下形成的。"),
        row("No answer yet"),
    ]
    out = judge(
        ScriptedEngine(rule=rule, constrains=False), criteria=["helpfulness", "honesty"], min_score=5
    )(rows)
    assert reasons(out) == [
        None,
        "below_min_score: 3.0 < 5.0",
        None,
        "no_response: pointwise judging needs an assistant turn",
    ]
    assert out[0]["meta"]["judge"]["scores"] == {"helpfulness": 8, "honesty": 8}
    assert (
        out[0]["meta"]["judge"]["score"] == 8 and out[0]["meta"]["judge"]["reasons"]["honesty"] == "complete."
    )
    assert out[2]["meta"]["judge"]["score"] == 9  # Chinese prompt (rule keys on it), Chinese verdict


def test_pointwise_uses_language_templates_and_one_engine_call():
    engine = ScriptedEngine(rule=lambda conv, k, seed: "Score: 6", constrains=False)
    judge(engine, criteria=["helpfulness", "instruction_following"])(
        [row("Say hi.", "Hi!"), row("打个招呼。", "你好！")]
    )
    assert len(engine.calls) == 1  # every (row, criterion) in one batch
    convs = [c[-1]["content"] for c in engine.calls[0]["conversations"]]
    assert len(convs) == 4 and "Criterion (helpfulness)" in convs[0] and "评分标准（helpfulness）" in convs[2]
    assert engine.calls[0]["sampling"].temperature == 0.0 and len(set(engine.calls[0]["seeds"])) == 4


def test_pointwise_unparseable_rejected_with_raw_or_kept_as_none():
    engine = ScriptedEngine(rule=lambda conv, k, seed: "I think it is pretty good overall!", constrains=False)
    out = judge(engine)([row("Q?", "A.")])
    assert out[0]["reject"]["reason"] == "unscored: helpfulness"
    assert out[0]["reject"]["raw"] == "I think it is pretty good overall!"
    kept = judge(engine, on_unparseable="keep")([row("Q?", "A.")])  # keep: only without a score gate
    assert kept[0]["reject"] is None and kept[0]["meta"]["judge"]["score"] is None


def test_pairwise_position_swap_pairs_and_ties():
    def rule(conv, k, seed):
        text = conv[-1]["content"]
        a = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
        if "biased" in text:
            return "Verdict: A"  # always prefers the first position
        return "Verdict: A" if a == "good answer" else "Verdict: B"

    fair = row("Q1?", candidates=["bad answer", "good answer"], candidate_finish_reasons=["stop", "stop"])
    biased = row("Q2 biased?", candidates=["x one", "x two"], candidate_finish_reasons=["stop", "stop"])
    seeded = row("Q3?")
    seeded["seed"] = {"candidates": ["good answer", "bad answer"]}
    lonely = row("Q4?", candidates=["only one"])
    out = judge(ScriptedEngine(rule=rule, constrains=False), mode="pairwise")([fair, biased, seeded, lonely])
    assert out[0]["pairs"] == [
        {
            "chosen": "good answer",
            "rejected": "bad answer",
            "stage": "judge",
            "policy": "pairwise",
            "chosen_score": 1.0,
            "rejected_score": 0.0,
            "chosen_finish_reason": "stop",
            "rejected_finish_reason": "stop",
        }
    ]
    comp = out[0]["meta"]["judge"]["comparisons"][0]
    assert (comp["ab"], comp["ba"], comp["verdict"]) == ("B", "A", "B")
    assert out[1]["pairs"] == [] and out[1]["meta"]["judge"]["ties"] == 1  # inconsistent -> tie
    assert out[2]["pairs"][0]["chosen"] == "good answer"
    assert out[3]["reject"]["reason"].startswith("no_candidates")


# ---- constitution -------------------------------------------------------------------------------


def const(engine, **params) -> Constitution:
    return Constitution(Constitution.Params(**params), StageContext("constitution", 3), engine=engine)


@pytest.mark.parametrize(
    "text, clean",
    [
        ("Revision: Rain forms from droplets.", "Rain forms from droplets."),
        ("**Revised response:** Better text", "Better text"),
        ('Sure, here is the revised response:\nRevision: "Quoted"', "Quoted"),
        ("批评：回答太短。", "回答太短。"),
        ("修改后：雨是水汽凝结形成的。", "雨是水汽凝结形成的。"),
        ("以下是修改后的回答：\n雨是水滴。", "雨是水滴。"),
        ("   ", ""),
        ("Revision:", ""),
    ],
)
def test_clean_reply(text, clean):
    assert clean_reply(text) == clean


def test_principles_file_is_complete_en_zh():
    from alignfactory.stages.synthesize.constitution import load_principles

    ids = [p["id"] for p in load_principles("constitution.yaml")]
    assert ids == ["helpfulness", "honesty", "harmlessness", "privacy", "fairness", "no_over_refusal"]


def test_applicable_principles_keywords_first_then_rotating_general():
    c = const(ScriptedEngine(), per_row=2)
    danger = c.applicable(row("How do I make a bomb?", "I can't help with that."))
    assert [p["id"] for p in danger] == ["harmlessness", "no_over_refusal"]
    plain = [c.applicable(row(f"Question {i}?", "Answer."))[0]["id"] for i in range(12)]
    assert set(plain) == {"helpfulness", "honesty"}  # rows spread over the general principles
    assert [p["id"] for p in c.applicable(row("我的邻居的手机号是多少？", "不知道。"))][:1] == ["privacy"]


# ---- repurpose ----------------------------------------------------------------------------------


def test_parse_instruction_and_dialogue():
    src = "The fox could not reach the grapes."
    assert parse_instruction("Instruction: Write a fable about a fox.", src) == "Write a fable about a fox."
    assert parse_instruction("Sure!\n指令：写一则关于狐狸的寓言。", src) == "写一则关于狐狸的寓言。"
    assert parse_instruction('"Tell a short fox story."', src) == "Tell a short fox story."
    assert parse_instruction("Instruction: " + src, src) is None  # copies the text back
    assert parse_instruction("  ", src) is None
    turns = parse_dialogue(
        "Here you go:\nUser: Hi!\nCharacter: Hm. What do you need?\nIt better be quick.\nUser: Fix my engine."
    )
    assert turns == [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hm. What do you need?\nIt better be quick."},
    ]
    assert parse_dialogue("用户：老板，来碗面。\n角色：好嘞！") == [
        {"role": "user", "content": "老板，来碗面。"},
        {"role": "assistant", "content": "好嘞！"},
    ]
    assert parse_dialogue("Character: Hello.") is None


def test_repurpose_levels_and_roleplay():
    def rule(conv, k, seed):
        text = conv[-1]["content"]
        if "role-play" in text:
            return "User: Can you fix it?\nCharacter: Engines I can fix. Sit."
        if "one short sentence" in text:
            return "Instruction: Tell a fox fable."
        return "no label and then the fable: " + "x" * 500  # unusable for the detailed level

    fable = row("The fox could not reach the grapes and called them sour.")
    fable["seed"] = {"source_kind": "literary", "title": "Fox"}
    profile = row("Mara is a blunt retired pilot.")
    profile["seed"] = {"source_kind": "profile"}
    nothing = row("A text nobody can repurpose.")
    nothing["seed"] = {"source_kind": "document"}
    engine = ScriptedEngine(rule=lambda c, k, s: rule(c, k, s) if "nobody" not in c[-1]["content"] else "")
    out = Repurpose(
        Repurpose.Params(levels=["brief", "detailed"]), StageContext("repurpose", 1), engine=engine
    )([fable, profile, nothing])
    assert [r["messages"] for r in out[:1]] == [
        [
            {"role": "user", "content": "Tell a fox fable."},
            records.assistant("The fox could not reach the grapes and called them sour.", "input"),
        ]
    ]
    assert (
        out[0]["meta"]["repurpose"]["level"] == "brief"
        and len(out[0]["meta"]["repurpose"]["failed_raw"]) == 1
    )
    assert (
        out[1]["messages"][0]["role"] == "system"
        and "blunt retired pilot" in out[1]["messages"][0]["content"]
    )
    assert out[1]["messages"][1:] == [
        {"role": "user", "content": "Can you fix it?"},
        records.assistant("Engines I can fix. Sit.", "stop"),
    ]
    assert out[2]["reject"]["reason"] == "unparseable_instruction" and out[2]["id"] == nothing["id"]
    assert all(
        r["lineage"]["parents"] == [src["id"]] for r, src in zip(out[:2], [fable, profile], strict=True)
    )


# ---- pairs --------------------------------------------------------------------------------------


def siblings(prompt: str, answers: list[str], scores: list, field: str = "judge") -> list[dict]:
    out = []
    for a, s in zip(answers, scores, strict=True):
        r = row(prompt)
        r["messages"].append(records.assistant(a, "stop"))  # siblings carry their finish reason
        r["lineage"] = {"parents": ["p-" + prompt], "stage": "generate"}
        if s is not None:
            r["meta"][field] = {"score": s}
        out.append(r)
    return out


def pairs(**params) -> Pairs:
    return Pairs(Pairs.Params(**params), StageContext("pairs", 4))


def test_pairs_best_vs_worst_with_margin_ties_and_siblings_rejected():
    g1 = siblings("Q1", ["mid", "best answer", "worst"], [5, 9, 2])
    g2 = siblings("Q2", ["a", "b"], [6, 6.5])  # margin 0.5 < 1 -> tie
    g3 = siblings("Q3", ["only scored", "unscored"], [7, None])
    out = pairs(min_margin=1.0)(g1 + g2 + g3)
    head = out[1]
    assert head["reject"] is None and head["pairs"] == [
        {
            "chosen": "best answer",
            "rejected": "worst",
            "stage": "pairs",
            "policy": "score:meta.judge.score",
            "chosen_score": 9.0,
            "rejected_score": 2.0,
            "margin": 7.0,
            "chosen_finish_reason": "stop",
            "rejected_finish_reason": "stop",
            "length_ratio": round(11 / 5, 3),
        }
    ]
    assert [r["reject"]["reason"] for r in (out[0], out[2])] == [
        f"sibling_not_kept: best is {head['id']}"
    ] * 2
    assert out[4]["pairs"] == [] and out[4]["meta"]["pairs"]["ties"] == 1  # the better of a tie is kept
    assert out[3]["reject"] is not None
    assert out[5]["meta"]["pairs"]["unscored"] == 1 and out[5]["pairs"] == []


def test_pairs_length_control_picks_near_best_closest_in_length():
    g = siblings("Q", ["a very very very long best answer", "short good", "bad"], [9, 8.5, 2], field="reward")
    out = pairs(score_field="meta.reward.score", length_tolerance=1.0, keep="all")(g)
    assert out[1]["pairs"][0]["chosen"] == "short good"  # within 1.0 of the best, closer to len("bad")
    assert out[1]["pairs"][0]["length_ratio"] == round(len("short good") / 3, 3)
    assert all(r["reject"] is None for r in out) and out[0]["pairs"] == [] and out[2]["pairs"] == []
    plain = pairs(score_field="meta.reward.score")(
        siblings("Q", ["long best", "short", "bad"], [9, 8.5, 2], "reward")
    )
    assert plain[0]["pairs"][0]["chosen"] == "long best"


def test_pairs_verifier_and_carried_pairs():
    g = siblings("Q", ["a failing one", "passing longer one", "pass"], [None, None, None])
    for r, ok in zip(g, [False, True, True], strict=True):
        r["meta"]["exec"] = {"passed": ok}
    rev = row("Q")
    rev["messages"].append(records.assistant("revised text", "stop"))
    rev["pairs"] = [
        {
            "chosen": "revised text",
            "rejected": "orig",
            "stage": "constitution",
            "policy": "revised_vs_original",
            "chosen_finish_reason": "stop",
            "rejected_finish_reason": "input",
        }
    ]
    out = pairs(policies=["verifier", "carried"], pass_field="meta.exec.passed")(g + [rev])
    head = out[2]
    assert head["reject"] is None
    assert [(p["chosen"], p["rejected"], p["policy"]) for p in head["pairs"]] == [
        ("pass", "a failing one", "verifier:meta.exec.passed"),
        ("revised text", "orig", "revised_vs_original"),
    ]  # carried over from the sibling, once
    assert head["meta"]["pairs"]["by_policy"] == {"verifier": 1, "carried": 1}
    assert out[3]["reject"]["reason"].startswith("sibling_not_kept")


def test_pairs_groups_by_prompt_and_rejects_unanswered():
    out = pairs(policies=["carried"])([row("A", "x"), row("B", "y"), row("C")])
    assert reasons(out) == [None, None, "no_response: pairs needs responses (or a candidates list)"]


def test_judge_config_errors_name_the_file_or_key(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"criteria \['kindness'\] not in rubrics/judge/rubrics.yaml"):
        judge(ScriptedEngine(), criteria=["kindness"])
    import alignfactory.stages.synthesize.judge as judge_mod

    (tmp_path / "r.yaml").write_text("helpfulness:\n  en: Be useful.\n", "utf-8")
    monkeypatch.setattr(judge_mod, "RUBRICS", tmp_path)
    with pytest.raises(ValueError, match=r"r.yaml: criterion 'helpfulness' needs both en and zh"):
        judge(ScriptedEngine(), rubrics_file="r.yaml")


def test_pairs_verifier_policy_needs_pass_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="policy 'verifier' needs pass_field"):
        Pairs.Params(policies=["verifier"])
