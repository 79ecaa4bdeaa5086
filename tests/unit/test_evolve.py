"""evolve: Evol-Instruct's elimination rules on hand-written cases, lineage and accounting (scripted engine)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from alignfactory import records
from alignfactory.run import apply_stage
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.evolve import Evolve, equality_verdict
from tests.unit.scripted import ScriptedEngine, last_user

HAIKU = "Write a haiku about autumn rain."
HAIKU2 = "Write a haiku about autumn rain that mentions a red umbrella."
ANSWER = "Cold rain on the street, a red umbrella blooms wide, autumn hums softly."
GIVEN = re.compile(r"#(?:The )?Given Prompt#:\n(.*?)\n\n#", re.S)
GIVEN_ZH = re.compile(r"#给定提示#：\n(.*?)\n\n#", re.S)


def script(evolutions: dict, equal: dict | None = None, answers: dict | None = None):
    """A rule engine: evolve prompts -> evolutions[instruction] (a list: one per round), equality prompts
    -> equal.get(second, "Not Equal"), anything else (the answer probe) -> answers.get(prompt, ANSWER)."""
    calls = {"evolve": [], "equal": [], "answer": []}
    rounds: dict[str, int] = {}

    def rule(conv, k, seed):
        text = last_user(conv)
        m = GIVEN.search(text) or GIVEN_ZH.search(text)
        if m:
            calls["evolve"].append(text)
            instr = m.group(1)
            replies = evolutions[instr]
            replies = replies if isinstance(replies, list) else [replies]
            n = rounds.get(instr, 0)
            rounds[instr] = n + 1
            return replies[min(n, len(replies) - 1)]
        if "The First Prompt:" in text or "第一条指令" in text:
            second = re.search(r"(?:The Second Prompt: |第二条指令：)(.*)\n", text).group(1)
            calls["equal"].append(second)
            return (equal or {}).get(second, "Not Equal")
        calls["answer"].append(text)
        return (answers or {}).get(text, ANSWER)

    return ScriptedEngine(rule=rule), calls


def row(instr: str, line: int = 1, answer: str | None = None, earlier: list | None = None) -> dict:
    msgs = list(earlier or []) + [{"role": "user", "content": instr}]
    if answer:
        msgs.append({"role": "assistant", "content": answer})
    return records.new_row(msgs, {"file": "seeds.jsonl", "line": line})


def evolve(engine, **params) -> Evolve:
    return Evolve(Evolve.Params(**params), StageContext("evolve", 6, seed=3), engine=engine)


def split(out):
    return [r for r in out if not r["reject"]], [r for r in out if r["reject"]]


def test_a_surviving_evolution_replaces_its_parent_as_a_child():
    engine, calls = script({HAIKU: HAIKU2})
    parent = row(HAIKU)
    out = apply_stage(evolve(engine), [parent])
    kept, rejected = split(out)
    assert rejected == [] and len(kept) == 1
    child = kept[0]
    assert child["messages"] == [{"role": "user", "content": HAIKU2}]
    assert child["id"] == records.message_id(child["messages"]) != parent["id"]
    lineage = child["lineage"]
    assert lineage["parents"] == [parent["id"]] and lineage["stage"] == "evolve" and lineage["round"] == 1
    assert lineage["operation"] in (
        "add_constraints",
        "deepening",
        "concretizing",
        "increase_reasoning",
        "complicate_input",
        "breadth",
    )
    meta = child["meta"]["evolve"]
    assert (
        meta["evolved"]
        and meta["evolved_from"] == HAIKU
        and meta["answer"] == ANSWER
        and meta["equal"] == "Not Equal"
    )
    assert calls["equal"] == [HAIKU2] and calls["answer"] == [
        HAIKU2
    ]  # the probe asks the evolved prompt itself


@pytest.mark.parametrize(
    "evolved, equal, answer, reason, raw",
    [
        (
            "#Rewritten Prompt#: " + HAIKU2,
            None,
            None,
            "eliminated: copies_template: '#rewritten prompt#'",
            None,
        ),
        (
            "Here is the rewritten prompt: " + HAIKU2,
            None,
            None,
            "eliminated: copies_template: 'rewritten prompt'",
            None,
        ),
        (
            "  write a haiku   about autumn rain. ",
            None,
            None,
            "eliminated: no_information_gain: identical to its parent",
            None,
        ),
        ("   ", None, None, "eliminated: empty", None),
        (HAIKU2, "Equal", None, "eliminated: no_information_gain: equality check said 'Equal'", "Equal"),
        (
            HAIKU2,
            None,
            "I'm sorry, but I can't help with that.",
            "eliminated: cannot_answer: refusal /\\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'|no)t|am unable|won't)/",
            "I'm sorry, but I can't help with that.",
        ),
        (HAIKU2, None, "Ok ...", "eliminated: cannot_answer: reply has 2 < 10 letters/digits", "Ok ..."),
    ],
)
def test_elimination_rules(evolved, equal, answer, reason, raw):
    engine, calls = script(
        {HAIKU: evolved}, {HAIKU2: equal} if equal else None, {HAIKU2: answer} if answer else None
    )
    parent = row(HAIKU)
    out = apply_stage(evolve(engine), [parent])
    kept, rejected = split(out)
    assert kept == [parent] and parent["meta"]["evolve"]["evolved"] is False  # no survivor: the parent stays
    assert parent["meta"]["evolve"]["history"][0]["status"] == reason.removeprefix("eliminated: ")
    (cand,) = rejected
    assert cand["reject"]["reason"] == reason and cand["reject"]["stage"] == "evolve"
    assert cand["reject"]["raw"] == (raw if raw is not None else evolved)  # the text that was judged
    assert cand["lineage"]["parents"] == [parent["id"]] and cand["lineage"]["round"] == 1
    if reason.startswith(
        ("eliminated: copies", "eliminated: empty", "eliminated: no_information_gain: identical")
    ):
        assert calls["equal"] == [] and calls["answer"] == []  # cheap rules first: no LLM checks spent


def test_an_evolution_cut_at_max_tokens_is_eliminated_as_truncated():
    cut = "Write a haiku about autumn rain that mentions a red umbrella and adds a layer of complexity to"
    engine, calls = script({HAIKU: [cut, HAIKU2]})
    chat = engine.chat

    def chat_cutting_evolutions(convs, sampling, seeds=None):  # rewrites stop at max_tokens in round 1
        outs = chat(convs, sampling, seeds)
        for conv, out in zip(convs, outs, strict=True):
            if GIVEN.search(last_user(conv)) and len(calls["evolve"]) == 1:
                out.finish_reasons = ["length"] * len(out.texts)
        return outs

    engine.chat = chat_cutting_evolutions
    parent = row(HAIKU)
    out = apply_stage(evolve(engine, rounds=2), [parent])
    kept, rejected = split(out)
    (cand,) = rejected
    assert cand["reject"]["reason"] == "eliminated: truncated: stopped at max_tokens"
    assert cand["reject"]["raw"] == cut and cand["lineage"]["round"] == 1
    assert calls["equal"] == [HAIKU2] and calls["answer"] == [HAIKU2]  # no LLM check spent on the cut one
    (child,) = kept  # round 2's complete rewrite of the parent survives
    assert records.instruction(child) == HAIKU2 and child["lineage"]["round"] == 2


def test_a_long_answer_that_says_sorry_still_answers():
    long = "I am sorry to hear it rained. " + "Drops fall on leaves and the street glows. " * 12
    engine, _ = script({HAIKU: HAIKU2}, answers={HAIKU2: long})
    kept, rejected = split(evolve(engine)([row(HAIKU)]))
    assert rejected == [] and kept[0]["messages"][-1]["content"] == HAIKU2


def test_chinese_rows_use_the_chinese_templates_and_markers():
    zh, zh2 = "用一句话解释什么是光合作用。", "用一句话解释什么是光合作用，并举一个生活中的例子。"
    engine, calls = script(
        {zh: ["#改写后的提示#：" + zh2, zh2]},
        answers={zh2: "光合作用是植物利用光能把二氧化碳和水变成有机物的过程。"},
    )
    out = evolve(engine, rounds=2)([row(zh)])
    kept, rejected = split(out)
    assert "#给定提示#" in calls["evolve"][0] and "Given Prompt" not in calls["evolve"][0]
    assert rejected[0]["reject"]["reason"] == "eliminated: copies_template: '#改写后的提示#'"
    assert rejected[0]["lineage"]["round"] == 1
    assert kept[0]["messages"][-1]["content"] == zh2 and kept[0]["lineage"]["round"] == 2  # round 2 retried
    assert "第一条指令" in engine.calls[2]["conversations"][0][0]["content"]  # the Chinese equality check


def test_rounds_chain_and_a_late_elimination_keeps_the_last_survivor():
    third = HAIKU2 + " Use exactly seventeen syllables."
    engine, calls = script({HAIKU: HAIKU2, HAIKU2: third}, equal={third: "Equal."})
    parent = row(HAIKU)
    out = apply_stage(evolve(engine, rounds=2), [parent])
    kept, rejected = split(out)
    assert [r["messages"][-1]["content"] for r in kept] == [HAIKU2]
    assert kept[0]["lineage"]["parents"] == [parent["id"]] and kept[0]["lineage"]["round"] == 1
    assert [h["status"] for h in kept[0]["meta"]["evolve"]["history"]] == [
        "kept",
        "no_information_gain: equality check said 'Equal.'",
    ]
    assert rejected[0]["meta"]["evolve"]["evolved_from"] == HAIKU2  # round 2 evolved the round-1 survivor
    assert rejected[0]["lineage"]["parents"] == [parent["id"]]


def test_operation_draw_is_seeded_and_follows_weights():
    engine, calls = script({HAIKU: HAIKU2})
    only_breadth = evolve(engine, weights={"breadth": 1.0})
    out = only_breadth([row(HAIKU)])
    assert "#Given Prompt#" in calls["evolve"][0] and "#Created Prompt#" in calls["evolve"][0]
    assert out[0]["lineage"]["operation"] == "breadth"
    rows = [row(f"Question number {i}?", i) for i in range(30)]
    s = evolve(ScriptedEngine())
    ops = [s.operation(r, 1) for r in rows]
    assert ops == [evolve(ScriptedEngine()).operation(r, 1) for r in rows]  # same seed, same draw
    assert len(set(ops)) >= 4  # six equally weighted operations over 30 rows
    assert s.template("in_depth", HAIKU) == "evolve/in_depth_en.jinja"
    assert s.template("equal", "写一首诗。") == "evolve/equal_zh.jinja"


def test_keep_parent_outputs_both():
    engine, _ = script({HAIKU: HAIKU2})
    parent = row(HAIKU)
    kept, _ = split(evolve(engine, keep_parent=True)([parent]))
    assert [r["messages"][-1]["content"] for r in kept] == [HAIKU, HAIKU2]
    assert kept[0]["meta"]["evolve"]["child"] == kept[1]["id"]


def test_multi_turn_row_keeps_earlier_turns_and_drops_the_old_answer():
    earlier = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    engine, _ = script({HAIKU: HAIKU2})
    kept, _ = split(evolve(engine)([row(HAIKU, answer="Rain falls.", earlier=earlier)]))
    assert kept[0]["messages"] == earlier + [{"role": "user", "content": HAIKU2}]


def test_params_are_checked():
    with pytest.raises(ValidationError, match="unknown operations"):
        Evolve.Params(weights={"shorten": 1.0})
    with pytest.raises(ValidationError, match="positive sum"):
        Evolve.Params(weights={"breadth": 0.0})


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Equal", True),
        ("Not Equal", False),
        ("not equal.", False),
        ("They are equal.", True),
        ("相同", True),
        ("不相同", False),
        ("maybe", None),
    ],
)
def test_equality_verdict(text, verdict):
    assert equality_verdict(text) is verdict
