"""evolve: Evol-Instruct's elimination rules on hand-written cases, lineage and accounting (scripted engine)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from alignfactory import records
from alignfactory.llm.base import Constraint
from alignfactory.run import apply_stage
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.evolve import Evolve, equality_verdict
from tests.unit.scripted import ScriptedEngine, last_user

HAIKU = "Write a haiku about autumn rain."
HAIKU2 = "Write a haiku about autumn rain that mentions a red umbrella."
ANSWER = "Cold rain on the street, a red umbrella blooms wide, autumn hums softly."
GIVEN = re.compile(r"#(?:The )?Given Prompt#:\n(.*?)\n\n#", re.S)
GIVEN_ZH = re.compile(r"#给定提示#：\n(.*?)\n\n#", re.S)


class Budgeted(ScriptedEngine):
    """A ScriptedEngine that honours max_tokens as a model does: a reply longer than max_tokens tokens
    (whitespace words, scripted.count_tokens) is cut to that many and finishes with "length"."""

    def chat(self, conversations, sampling, seeds=None):
        outs = super().chat(conversations, sampling, seeds)
        for out in outs:
            for k, text in enumerate(out.texts):
                words = text.split()
                if len(words) > sampling.max_tokens:
                    out.texts[k] = " ".join(words[: sampling.max_tokens])
                    out.finish_reasons[k] = "length"
        return outs


def script(evolutions: dict, equal: dict | None = None, answers: dict | None = None, **engine_kw):
    """A rule engine (Budgeted): evolve prompts -> evolutions[instruction] (a list: one per round),
    equality prompts -> equal.get(second, "Not Equal" / "不相同"), anything else (the answer probe) ->
    answers.get(prompt, ANSWER)."""
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
            return (equal or {}).get(second, "不相同" if "第一条指令" in text else "Not Equal")
        calls["answer"].append(text)
        return (answers or {}).get(text, ANSWER)

    return Budgeted(rule=rule, **engine_kw), calls


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
    out = apply_stage(evolve(engine, rounds=2, on_truncated="reject"), [parent])
    kept, rejected = split(out)
    (cand,) = rejected
    assert cand["reject"]["reason"] == "eliminated: truncated: stopped at max_tokens"
    assert cand["reject"]["raw"] == cut and cand["lineage"]["round"] == 1
    assert calls["equal"] == [HAIKU2] and calls["answer"] == [HAIKU2]  # no LLM check spent on the cut one
    (child,) = kept  # round 2's complete rewrite of the parent survives
    assert records.instruction(child) == HAIKU2 and child["lineage"]["round"] == 2


LONG_SORRY = (
    "I am sorry to hear it rained. " + "Drops fall on leaves and the street glows. " * 12
)  # 103 words


@pytest.mark.parametrize(
    "params, budgets, probe",
    [
        # cut at 64 tokens, retried at 128: complete, 103 words >= refusal_max_words 80: an answer
        ({}, [64, 128], "judged: complete reply"),
        # cut at 64, no retry: not judged from its first 64 words (which hold "sorry" under 80 words)
        ({"on_truncated": "reject"}, [64], "not judged: the answer ran past 64 tokens"),
        # sft_data.yaml's probe budget: cut at 32 and again at 64
        ({"answer_max_tokens": 32}, [32, 64], "not judged: the answer ran past 64 tokens"),
    ],
)
def test_a_long_answer_that_says_sorry_still_answers(params, budgets, probe):
    # Fails on the old code: the engine cuts the probe at answer_max_tokens (as a model does) and the
    # old stage judged the first 64 words, "sorry" under 80 words, a refusal.
    engine, calls = script({HAIKU: HAIKU2}, answers={HAIKU2: LONG_SORRY})
    kept, rejected = split(evolve(engine, **params)([row(HAIKU)]))
    assert rejected == [] and kept[0]["messages"][-1]["content"] == HAIKU2
    meta = kept[0]["meta"]["evolve"]
    assert meta["answer_probe"].startswith(probe)
    assert [
        c["sampling"].max_tokens for c in engine.calls if c["conversations"][0][0]["content"] == HAIKU2
    ] == (budgets)


def test_a_short_complete_refusal_is_still_eliminated_and_a_cut_one_is_not_judged():
    refusal = "I'm sorry, but I can't help with that."
    engine, _ = script({HAIKU: HAIKU2}, answers={HAIKU2: refusal})
    _, rejected = split(evolve(engine)([row(HAIKU)]))
    assert rejected[0]["reject"]["reason"].startswith("eliminated: cannot_answer: refusal")
    # the same words cut at 4 tokens after the retry: the partial text decides nothing
    engine, _ = script({HAIKU: HAIKU2}, answers={HAIKU2: refusal})
    kept, rejected = split(evolve(engine, answer_max_tokens=2)([row(HAIKU)]))
    assert rejected == [] and kept[0]["meta"]["evolve"]["answer_finish_reason"] == "length"


def test_a_probe_answer_that_cannot_be_read_does_not_pass():
    engine, _ = script({HAIKU: HAIKU2}, answers={HAIKU2: ". . . . . . . . . ."})
    _, rejected = split(evolve(engine, answer_max_tokens=4)([row(HAIKU)]))  # cut, no letters
    assert (
        rejected[0]["reject"]["reason"]
        == "eliminated: unprobed: answer cut at 8 tokens with 0 letters/digits"
    )
    engine, _ = script({HAIKU: HAIKU2})
    chat = engine.chat

    def aborting(convs, sampling, seeds=None):
        outs = chat(convs, sampling, seeds)
        if convs[0][0]["content"] == HAIKU2:
            for o in outs:
                o.finish_reasons = ["abort"]
        return outs

    engine.chat = aborting
    _, rejected = split(evolve(engine)([row(HAIKU)]))
    assert rejected[0]["reject"]["reason"] == "eliminated: unprobed: answer finish_reason 'abort'"
    assert rejected[0]["reject"]["raw"] == ANSWER


def test_a_rewrite_cut_once_is_retried_at_twice_the_budget():
    long = HAIKU2 + " " + " ".join(f"word{i}" for i in range(60))  # 71 words
    engine, calls = script({HAIKU: long})
    kept, rejected = split(evolve(engine, max_tokens=64)([row(HAIKU)]))
    assert rejected == [] and records.instruction(kept[0]) == long
    assert (
        kept[0]["meta"]["evolve"]["retried"] is True and kept[0]["meta"]["evolve"]["finish_reason"] == "stop"
    )
    assert [c["sampling"].max_tokens for c in engine.calls][:2] == [64, 128]
    engine, calls = script({HAIKU: long + " more" * 80})  # still cut at 128: eliminated, raw kept
    kept, rejected = split(evolve(engine, max_tokens=64)([row(HAIKU)]))
    assert rejected[0]["reject"]["reason"] == "eliminated: truncated: stopped at max_tokens"
    assert len(rejected[0]["reject"]["raw"].split()) == 128 and calls["equal"] == []


def test_equality_check_asks_for_its_shape_and_reads_it():
    engine, _ = script({HAIKU: HAIKU2})
    stage = evolve(engine)
    kept, _ = split(stage([row(HAIKU)]))
    equal_call = next(c for c in engine.calls if "The First Prompt:" in c["conversations"][0][0]["content"])
    assert equal_call["sampling"].constraint == Constraint.choice(("Equal", "Not Equal"))
    assert kept[0]["meta"]["evolve"]["equal_parse"] == "structured"
    assert Evolve.output_constraints(stage.params) == [
        Constraint.choice(("Equal", "Not Equal")),
        Constraint.choice(("相同", "不相同")),
    ]
    assert Evolve.output_constraints(Evolve.Params(equality_check=False)) == []


@pytest.mark.parametrize(
    "reply, constrains, unclear, status",
    [
        # a constraining engine: only the choices are verdicts
        ("Not Equal", True, "eliminate", "kept"),
        (
            "They are not equal",
            True,
            "eliminate",
            "unjudged: equality check unreadable: 'They are not equal'",
        ),
        # free text: the reader, its path recorded
        ("They are not equal", False, "eliminate", "kept"),
        ("Hmm, hard to say", False, "eliminate", "unjudged: equality check unreadable: 'Hmm, hard to say'"),
        ("Hmm, hard to say", False, "keep", "kept"),
        # a cut reply is no verdict, whatever its partial text says
        (
            "Not Equal because the second one adds a constraint",
            False,
            "eliminate",
            "unjudged: equality check cut: finish_reason 'length'",
        ),
    ],
)
def test_equality_verdicts_structured_free_text_and_unreadable(reply, constrains, unclear, status):
    # Fails on the old code for the unreadable rows: a reply with no verdict was kept by default.
    engine, _ = script({HAIKU: HAIKU2}, equal={HAIKU2: reply}, constrains=constrains)
    out = evolve(engine, equality_unclear=unclear, judge_max_tokens=4)([row(HAIKU)])
    kept, rejected = split(out)
    assert kept[0]["meta"]["evolve"]["history"][0]["status"] == status  # the child, or the row kept as is
    if status.startswith("unjudged"):
        assert rejected[0]["reject"]["raw"] == " ".join(reply.split()[:8])  # the verdict text kept
        assert rejected[0]["meta"]["evolve"]["equal_parse"] == (
            "structured" if constrains else "free_text: scripted engine set to not constrain"
        )


def test_every_surviving_round_is_its_own_row_with_its_lineage():
    # Fails on the old code, which kept only the last survivor of each input row.
    h3, h4 = HAIKU2 + " Use seventeen syllables.", HAIKU2 + " Use seventeen syllables. Rhyme twice."
    parent, other = row(HAIKU), row("Name three primary colors in French.", 2)
    engine, _ = script({HAIKU: HAIKU2, HAIKU2: h3, h3: h4, "Name three primary colors in French.": "  "})
    out = apply_stage(evolve(engine, rounds=3), [parent, other])
    kept, rejected = split(out)
    chain = [r for r in kept if r["lineage"].get("stage") == "evolve"]
    assert [records.instruction(r) for r in chain] == [HAIKU2, h3, h4]
    assert [r["lineage"]["round"] for r in chain] == [1, 2, 3]
    assert [r["lineage"]["parents"] for r in chain] == [[parent["id"]], [chain[0]["id"]], [chain[1]["id"]]]
    assert [len(r["lineage"]["operations"]) for r in chain] == [1, 2, 3]
    assert all(r["meta"]["evolve"]["origin"] == parent["id"] for r in chain)
    assert [r["meta"]["evolve"]["evolved_from"] for r in chain] == [HAIKU, HAIKU2, h3]
    # accounting: every input row is returned or parents an output row; rejected rows are only the
    # stage's own discarded candidates (three empty rewrites of `other`, which passes on unchanged)
    assert other in kept and other["meta"]["evolve"]["evolved"] is False
    assert parent not in kept and len(kept) == 4
    assert len(rejected) == 3 and all(records.discarded_candidate(r) for r in rejected)
    assert not any(r["reject"]["reason"] == "dropped_by_stage" for r in rejected)


def test_a_middle_elimination_keeps_both_survivors_and_the_next_round_evolves_the_last():
    h3 = HAIKU2 + " Use seventeen syllables."
    engine, _ = script({HAIKU: HAIKU2, HAIKU2: ["#Rewritten Prompt#: x", h3]})
    parent = row(HAIKU)
    kept, rejected = split(apply_stage(evolve(engine, rounds=3, keep_parent=True), [parent]))
    assert [records.instruction(r) for r in kept] == [HAIKU, HAIKU2, h3]
    r1, r3 = kept[1], kept[2]
    assert r3["lineage"]["round"] == 3 and r3["lineage"]["parents"] == [r1["id"]]
    assert [h["status"] for h in r3["meta"]["evolve"]["history"]][1].startswith("copies_template")
    assert rejected[0]["lineage"]["parents"] == [r1["id"]] and rejected[0]["lineage"]["round"] == 2
    assert kept[0]["meta"]["evolve"]["children"] == [r1["id"], r3["id"]]


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
    engine, calls = script({HAIKU: HAIKU2, HAIKU2: third}, equal={third: "Equal"})
    parent = row(HAIKU)
    out = apply_stage(evolve(engine, rounds=2), [parent])
    kept, rejected = split(out)
    assert [r["messages"][-1]["content"] for r in kept] == [HAIKU2]
    assert kept[0]["lineage"]["parents"] == [parent["id"]] and kept[0]["lineage"]["round"] == 1
    assert [h["status"] for h in kept[0]["meta"]["evolve"]["history"]] == ["kept"]  # up to its round
    assert rejected[0]["reject"]["reason"] == "eliminated: no_information_gain: equality check said 'Equal'"
    assert rejected[0]["meta"]["evolve"]["evolved_from"] == HAIKU2  # round 2 evolved the round-1 survivor
    assert rejected[0]["lineage"]["parents"] == [kept[0]["id"]]  # a child of the row it evolved from
    assert records.discarded_candidate(rejected[0])


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
    assert kept[0]["meta"]["evolve"]["children"] == [kept[1]["id"]]


def test_multi_turn_row_keeps_earlier_turns_and_drops_the_old_answer():
    earlier = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    engine, _ = script({HAIKU: HAIKU2})
    kept, _ = split(evolve(engine)([row(HAIKU, answer="Rain falls.", earlier=earlier)]))
    assert kept[0]["messages"] == earlier + [{"role": "user", "content": HAIKU2}]
    meta = kept[0]["meta"]["evolve"]  # says which turn it rewrote: the last user turn, of two
    assert meta["rewritten_turn"] == 3 and meta["user_turns"] == 2


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


def test_a_rewrite_back_to_an_earlier_round_is_no_gain():
    # round 2 rewrites HAIKU2 back to HAIKU: the chain's own origin, which would repeat its id
    engine, calls = script({HAIKU: HAIKU2, HAIKU2: HAIKU})
    parent = row(HAIKU)
    kept, rejected = split(apply_stage(evolve(engine, rounds=2), [parent]))
    assert [records.instruction(r) for r in kept] == [HAIKU2]
    assert rejected[0]["reject"]["reason"] == "eliminated: no_information_gain: identical to an earlier round"
    assert calls["equal"] == [HAIKU2]  # no LLM check spent on it
