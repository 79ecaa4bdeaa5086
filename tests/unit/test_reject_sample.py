"""reject_sample on a scripted engine: reference mode, self-consistency, min share, pairs, rejects."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from alignfactory import records, registry
from alignfactory.stages.base import RUBRICS, StageContext
from alignfactory.stages.synthesize.reject_sample import RejectSample
from tests.unit.scripted import ScriptedEngine

Q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
ZH = "小明有3个苹果，又买了4个。他现在有几个苹果？"


def row(question: str, **seed) -> dict:
    r = records.new_row([{"role": "user", "content": question}], {"file": "t.jsonl", "line": 1})
    if seed:
        r["seed"] = seed
    return r


def make(samples: dict[str, list[str]] | list[str], truncated=(), **params):
    """samples: question -> the n texts the engine returns (or one list for every question)."""

    def rule(conv, k, seed):
        text = conv[-1]["content"]
        if isinstance(samples, list):
            return samples[k]
        return next(v[k] for q, v in samples.items() if text.startswith(q))

    engine = ScriptedEngine(rule=rule)
    engine.truncated = set(truncated)
    params.setdefault("n", len(samples) if isinstance(samples, list) else len(next(iter(samples.values()))))
    stage = RejectSample(
        RejectSample.Params(**params), StageContext("reject_sample", 1, seed=5), engine=engine
    )
    return stage, engine


RIGHT_LONG = "3 + 4 = 7, because we add the apples he had to the apples he bought. The answer is 7."
RIGHT_SHORT = "3 + 4 = 7. The answer is 7 apples."
WRONG = "3 * 4 = 12. The answer is 12."
SILENT = "Apples are a healthy fruit."


def test_reference_mode_one_call_shortest_chosen_pairs_and_meta():
    stage, engine = make([RIGHT_LONG, WRONG, RIGHT_SHORT, SILENT])
    rows = [row(Q, answer="7"), row("Other: 2 + 5?", answer=7)]  # an int reference is fine too
    out = stage(rows)

    assert len(engine.calls) == 1  # all rows, all samples: one engine call
    call = engine.calls[0]
    assert call["sampling"].n == 4 and len(call["conversations"]) == 2  # each prompt sent once, n samples
    assert all(not r["reject"] for r in out)

    r = out[0]
    assert r["messages"][-1] == records.assistant(RIGHT_SHORT, "stop")  # shortest correct, its reason
    assert r["messages"][0]["content"] == Q  # SFT prompt = the row's own question, not the template
    assert r["lineage"] == {"parents": [rows[0]["id"]], "stage": "reject_sample"} and r["id"] != rows[0]["id"]
    meta = r["meta"]["reject_sample"]
    assert meta["mode"] == "reference" and meta["reference"] == "7" and meta["chosen"] == 2
    assert [s["answer"] for s in meta["samples"]] == ["7", "12", "7 apples", None]
    assert [s["verdict"] for s in meta["samples"]] == ["correct", "incorrect", "correct", "no_answer"]
    # (correct, incorrect) pairs, the chosen one first: 2 correct x 2 incorrect
    assert [(p["chosen"], p["rejected"]) for p in r["pairs"]] == [
        (RIGHT_SHORT, WRONG),
        (RIGHT_SHORT, SILENT),
        (RIGHT_LONG, WRONG),
        (RIGHT_LONG, SILENT),
    ]
    assert all(
        p["stage"] == "reject_sample" and p["chosen_score"] == 1.0 == 1 - p["rejected_score"]
        for p in r["pairs"]
    )
    assert {(p["chosen_finish_reason"], p["rejected_finish_reason"]) for p in r["pairs"]} == {
        ("stop", "stop")
    }


def test_prompt_template_asks_for_a_final_answer_in_the_rows_language():
    stage, engine = make({Q: [RIGHT_SHORT], ZH: ["3+4=7。答案是 7。"]})
    out = stage([row(Q, answer="7"), row(ZH, answer="七")])
    en, zh = (c[-1]["content"] for c in engine.calls[0]["conversations"])
    assert en.startswith(Q) and "The answer is <final answer>" in en
    assert zh.startswith(ZH) and "答案是" in zh
    assert not out[1]["reject"] and out[1]["meta"]["reject_sample"]["samples"][0]["verdict"] == "correct"
    assert RejectSample.template_files(stage.params) == [RUBRICS / "prompts" / "math_solution.jinja"]
    bare, engine2 = make([RIGHT_SHORT], template=None)
    bare([row(Q, answer="7")])
    assert engine2.calls[0]["conversations"][0] == [{"role": "user", "content": Q}]


def test_no_correct_sample_is_rejected_with_the_raw_samples():
    stage, _ = make([WRONG, SILENT])
    [r] = stage([row(Q, answer="7")])
    assert r["reject"]["stage"] == "reject_sample" and r["reject"]["reason"].startswith("no_correct_sample")
    assert json.loads(r["reject"]["raw"]) == [WRONG, SILENT]
    assert [s["verdict"] for s in r["meta"]["reject_sample"]["samples"]] == ["incorrect", "no_answer"]


def test_truncated_samples_are_never_chosen_or_paired():
    stage, engine = make([RIGHT_SHORT, WRONG], truncated={Q}, template=None)  # every sample hit max_tokens
    [r] = stage([row(Q, answer="7")])
    assert r["reject"]["reason"] == "truncated: all 2 candidates incomplete (finish_reason length)"
    assert [s["verdict"] for s in r["meta"]["reject_sample"]["samples"]] == ["truncated", "truncated"]
    assert json.loads(r["reject"]["raw"]) == [
        RIGHT_SHORT,
        RIGHT_SHORT,
    ]  # the retries' texts (sample 0's script)
    assert (
        len(engine.calls) == 2
        and engine.calls[1]["sampling"].max_tokens == 2 * engine.calls[0]["sampling"].max_tokens
    )
    with pytest.raises(ValidationError):
        RejectSample.Params(drop_truncated=False)  # replaced by on_truncated: there is no keeping a cut text


def test_self_consistency_majority_is_correct_and_share_kept():
    samples = ["The answer is 5.", "It is 5.0 in the end.", "The answer is 6.", "The answer is five."]
    stage, _ = make(samples, mode="consistency")
    [r] = stage([row(Q)])  # no reference answer: majority vote
    meta = r["meta"]["reject_sample"]
    assert not r["reject"] and meta["mode"] == "consistency" and meta["reference"] is None
    assert meta["vote"]["answer"] == "5" and meta["vote"]["votes"] == 3 and meta["vote"]["share"] == 0.75
    assert [c["size"] for c in meta["vote"]["clusters"]] == [3, 1]
    assert [s["verdict"] for s in meta["samples"]] == ["correct", "correct", "incorrect", "correct"]
    assert r["messages"][-1]["content"] == "The answer is 5."  # shortest of the majority
    assert {p["rejected"] for p in r["pairs"]} == {"The answer is 6."} and len(r["pairs"]) == 3


def test_self_consistency_min_share_min_votes_and_ties_reject():
    spread = ["The answer is 5.", "The answer is 6.", "The answer is 7.", "The answer is 5."]
    stage, _ = make(spread, min_share=0.6, mode="consistency")
    [r] = stage([row(Q)])
    assert r["reject"]["reason"].startswith("low_agreement: share 0.50")
    assert r["meta"]["reject_sample"]["vote"]["share"] == 0.5
    ok, _ = make(spread, min_share=0.5, mode="consistency")  # the same samples pass a lower bar
    assert not ok([row(Q)])[0]["reject"]

    lone, _ = make(
        ["The answer is 5."], min_votes=2, mode="consistency"
    )  # n=1 agrees with itself: not evidence
    assert lone([row(Q)])[0]["reject"]["reason"].startswith("low_agreement")

    tie, _ = make(["The answer is 5.", "The answer is 6."], mode="consistency")
    assert tie([row(Q)])[0]["reject"]["reason"].startswith("tie")
    silent, _ = make([SILENT, SILENT], mode="consistency")
    assert silent([row(Q)])[0]["reject"]["reason"].startswith("no_answer")


def test_mode_reference_needs_one_and_consistency_ignores_it():
    stage, _ = make([RIGHT_SHORT, RIGHT_SHORT], mode="reference")
    [r] = stage([row(Q)])
    assert r["reject"]["reason"] == "no_reference: seed fields 'answer' and 'solution' missing"
    cons, _ = make([WRONG, WRONG], mode="consistency")
    [c] = cons([row(Q, answer="7")])  # the samples agree on 12; the reference is not consulted
    assert not c["reject"] and c["meta"]["reject_sample"]["vote"]["answer"] == "12"


def test_only_with_reference_passes_other_rows_through_untouched():
    stage, engine = make([RIGHT_SHORT, WRONG], only_with_reference=True)
    plain = row("Write a haiku about rain.")
    before = json.loads(json.dumps(plain))
    out = stage([plain, row(Q, answer="7")])
    assert out[0] is plain and plain == before  # not sampled, no meta, no new id
    assert len(engine.calls[0]["conversations"]) == 1  # only the row with a reference was sampled
    assert not out[1]["reject"] and out[1]["pairs"]
    idle, idle_engine = make([RIGHT_SHORT], only_with_reference=True)
    assert idle([plain]) == [plain] and idle_engine.calls == []  # nothing to sample: no engine call


def test_reference_solution_and_existing_response_are_candidates():
    solution = "3 + 4 = 7 apples. The answer is 7."
    stage, _ = make([WRONG, SILENT], reference_as_candidate=True)
    [r] = stage([row(Q, answer="7", solution=solution)])
    samples = r["meta"]["reject_sample"]["samples"]
    assert [s["source"] for s in samples] == ["sample", "sample", "reference"]
    assert r["messages"][-1]["content"] == solution
    assert [(p["chosen"], p["rejected"]) for p in r["pairs"]] == [(solution, WRONG), (solution, SILENT)]

    answered = row(Q, answer="7")
    answered["messages"].append({"role": "assistant", "content": "He has 7."})
    stage2, _ = make([WRONG])
    [r2] = stage2([answered])
    assert [s["source"] for s in r2["meta"]["reject_sample"]["samples"]] == ["sample", "input"]
    assert r2["messages"][-1]["content"] == "He has 7." and len(r2["messages"]) == 2
    earlier = row(Q, answer="7")
    earlier["pairs"] = [{"chosen": "x", "rejected": "y", "stage": "exec_feedback"}]
    stage3, _ = make([RIGHT_SHORT, WRONG])
    assert [p["stage"] for p in stage3([earlier])[0]["pairs"]] == ["exec_feedback", "reject_sample"]


def test_registry_and_params():
    assert registry.resolve("reject_sample") is RejectSample
    with pytest.raises(ValidationError):
        RejectSample.Params(n=0)
    with pytest.raises(ValidationError):
        RejectSample.Params(min_share=1.5)
    with pytest.raises(ValidationError):
        RejectSample.Params(samples=3)  # unknown key


def test_bundled_seed_set_answers_match_their_solutions():
    """pipelines/seeds/math_seed.jsonl: >= 60 problems, EN and ZH, each worked solution verified."""
    from alignfactory.verify.math import equivalent, extract_answer

    path = Path(__file__).resolve().parents[2] / "pipelines" / "seeds" / "math_seed.jsonl"
    seeds = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    zh = [s for s in seeds if re.search(r"[\u4e00-\u9fff]", s["instruction"])]
    assert len(seeds) >= 60 and len(zh) >= 15 and len(seeds) - len(zh) >= 30
    assert len({s["instruction"] for s in seeds}) == len(seeds)
    bad = [s for s in seeds if not equivalent(extract_answer(s["solution"]), s["answer"])]
    assert bad == []


# ---- references, modes and completeness (issue 15 items 1 and 6) ------------------------------------

GSM8K_ANSWER = (  # a GSM8K `answer` field as shipped: the worked solution, then "#### <answer>"
    "Tom starts the day with 3 apples. He buys 4 more apples at the market, so he now has 3 + 4 = <<3+4=7>>7.\n"
    "He did not eat, sell or give away any of them, so all of them are still his: 7 apples in all.\n#### 7"
)
MATH_SOLUTION = "He has $3$ and buys $4$, so he has $3 + 4 = \\boxed{7}$ apples."


class PerSampleEngine(ScriptedEngine):
    """A ScriptedEngine whose sample k finishes with reasons[k] (first call only; retries finish "stop")."""

    def __init__(self, texts: list[str], reasons: list[str | None]):
        super().__init__(rule=lambda conv, k, seed: texts[k])
        self.reasons = reasons

    def chat(self, conversations, sampling, seeds=None):
        outs = super().chat(conversations, sampling, seeds)
        if len(self.calls) == 1:
            for out in outs:
                out.finish_reasons = list(self.reasons)
        return outs


def staged(engine, **params) -> RejectSample:
    return RejectSample(
        RejectSample.Params(**params), StageContext("reject_sample", 1, seed=5), engine=engine
    )


def test_a_row_without_a_reference_is_rejected_not_voted_on():
    """Old code: mode auto (the default) switched such a row to a majority vote, and it passed."""
    stage, engine = make(["The answer is 5.", "The answer is 5."])
    [r] = stage([row(Q)])
    assert r["reject"]["reason"] == "no_reference: seed fields 'answer' and 'solution' missing"
    assert json.loads(r["reject"]["raw"]) == {"answer": None, "solution": None}
    assert engine.calls == []  # not sampled: nothing to check the samples against
    assert RejectSample.Params().mode == "reference"


def test_an_unreadable_reference_is_no_reference_in_every_mode_but_consistency():
    """Old code: a solution field alone was never a reference (auto -> majority vote)."""
    unreadable = row(Q, solution="Draw the apples and count them.\nThat is all.")
    for mode in ("reference", "auto"):
        stage, _ = make(["The answer is 5.", "The answer is 5."], mode=mode)
        [r] = stage([json.loads(json.dumps(unreadable))])
        assert r["reject"]["reason"] == "no_reference: no final answer found in 'solution'"
        assert json.loads(r["reject"]["raw"])["solution"].startswith("Draw the apples")
    voted, _ = make(["The answer is 5.", "The answer is 5."], mode="consistency")
    assert not voted([unreadable])[0]["reject"]  # the spec asked for a vote: it gets one


def test_auto_votes_only_on_rows_that_carry_no_reference():
    stage, _ = make(["The answer is 7.", "The answer is 7."], mode="auto")
    plain, ref = stage([row(Q), row(Q, answer="7")])
    assert (
        plain["meta"]["reject_sample"]["mode"] == "consistency" and "vote" in plain["meta"]["reject_sample"]
    )
    assert ref["meta"]["reject_sample"]["mode"] == "reference" and "vote" not in ref["meta"]["reject_sample"]


def test_raw_gsm8k_and_math_references_compare_by_their_final_answer():
    """Old code: a GSM8K answer over 200 characters never matched ('7' vs the whole text), and a MATH
    row with only a solution was voted on instead of checked."""
    assert len(GSM8K_ANSWER) > 200
    stage, _ = make([RIGHT_SHORT, WRONG])
    gsm, math_row = stage([row(Q, answer=GSM8K_ANSWER), row(Q, solution=MATH_SOLUTION)])
    g, m = gsm["meta"]["reject_sample"], math_row["meta"]["reject_sample"]
    assert not gsm["reject"] and g["reference"] == "7" and g["reference_raw"] == GSM8K_ANSWER
    assert g["reference_field"] == "answer" and [s["verdict"] for s in g["samples"]] == [
        "correct",
        "incorrect",
    ]
    assert not math_row["reject"] and m["mode"] == "reference" and m["reference"] == "7"
    assert m["reference_field"] == "solution" and gsm["pairs"][0]["reference"] == "7"


def test_only_with_reference_samples_solution_rows_and_rejects_unreadable_ones():
    stage, engine = make([RIGHT_SHORT, WRONG], only_with_reference=True)
    plain = row("Write a haiku about rain.")
    out = stage([plain, row(Q, solution=MATH_SOLUTION), row(Q, answer="see the worked solution\nabove")])
    assert out[0] is plain and not plain["meta"]  # untouched
    assert not out[1]["reject"] and out[1]["meta"]["reject_sample"]["reference"] == "7"
    assert out[2]["reject"]["reason"].startswith("no_reference")
    assert len(engine.calls[0]["conversations"]) == 1  # only the row with a usable reference was sampled


def test_on_truncated_retry_recovers_a_cut_sample_and_reject_does_not():
    """Old code: Params had no on_truncated (ValidationError), and no retry was made."""
    retry = ScriptedEngine(rule=lambda conv, k, seed: RIGHT_SHORT, truncated_once={Q})
    [r] = staged(retry, n=2, template=None)([row(Q, answer="7")])
    assert not r["reject"] and r["messages"][-1] == records.assistant(RIGHT_SHORT, "stop")
    assert [s["retried"] for s in r["meta"]["reject_sample"]["samples"]] == [True, True]
    once = ScriptedEngine(rule=lambda conv, k, seed: RIGHT_SHORT, truncated_once={Q})
    [cut] = staged(once, n=2, template=None, on_truncated="reject")([row(Q, answer="7")])
    assert cut["reject"]["reason"].startswith("truncated: all 2 candidates incomplete")
    assert len(once.calls) == 1


def test_an_incomplete_sample_is_never_chosen_paired_or_voted():
    """Old code only left out finish_reason "length": an "abort" or missing reason was chosen."""
    texts = ["7", "The answer is 7.", "The answer is 7 apples.", "The answer is 12.", "The answer is 9."]
    reasons = ["abort", None, "stop", "stop", "length"]
    [r] = staged(PerSampleEngine(texts, reasons), n=5, template=None, on_truncated="reject")(
        [row(Q, answer="7")]
    )
    samples = r["meta"]["reject_sample"]["samples"]
    assert [s["verdict"] for s in samples] == ["truncated", "truncated", "correct", "incorrect", "truncated"]
    assert r["messages"][-1] == records.assistant(
        "The answer is 7 apples.", "stop"
    )  # not the shorter cut ones
    assert [(p["chosen"], p["rejected"]) for p in r["pairs"]] == [
        ("The answer is 7 apples.", "The answer is 12.")
    ]
    assert r["meta"]["reject_sample"]["incomplete"] == 3

    # consistency: cut samples are no votes, but they stay in the share's denominator
    votes = ["The answer is 5.", "The answer is 5.", "The answer is 5.", "The answer is 5."]
    engine = PerSampleEngine(votes, ["stop", "stop", "length", "length"])
    [v] = staged(engine, n=4, template=None, mode="consistency", on_truncated="reject", min_share=0.6)(
        [row(Q)]
    )
    assert (
        v["meta"]["reject_sample"]["vote"]["votes"] == 2
        and v["meta"]["reject_sample"]["vote"]["share"] == 0.5
    )
    assert v["reject"]["reason"].startswith("low_agreement")


def test_input_texts_carry_their_own_finish_reason():
    """The reference solution and an input answer are "input"; an earlier stage's cut answer is not whole."""
    solution = "3 + 4 = 7 apples. The answer is 7."
    stage, _ = make([WRONG], reference_as_candidate=True)
    [r] = stage([row(Q, answer="7", solution=solution)])
    assert r["messages"][-1] == records.assistant(solution, "input")
    assert [(p["chosen_finish_reason"], p["rejected_finish_reason"]) for p in r["pairs"]] == [
        ("input", "stop")
    ]

    given = row(Q, answer="7")
    given["messages"].append(records.assistant("He has 7.", "input"))
    [g] = make([WRONG])[0]([given])
    assert g["messages"][-1] == records.assistant("He has 7.", "input")

    cut = row(Q, answer="7")
    cut["messages"].append(records.assistant("He has 7", "length"))  # generate hit max_tokens
    [c] = make([WRONG])[0]([cut])
    assert [s["verdict"] for s in c["meta"]["reject_sample"]["samples"]] == ["incorrect", "truncated"]
    assert c["reject"]["reason"].startswith("no_correct_sample")


def test_a_question_rewritten_by_evolve_has_no_reference_from_its_seed():
    """evolve's children inherit the seed line (records.derive copies it), but its answer belongs to the
    question before the rewrite. Old code checked the new question against the old answer."""

    def evolved(answer: str) -> dict:
        r = row("Tom has 3 apples and buys 4 more, then gives away half. How many are left?", answer=answer)
        r["meta"]["evolve"] = {"evolved": True, "origin": "abc"}
        return r

    stage, engine = make(
        ["The answer is 7.", "The answer is 7."]
    )  # the old answer, wrong for the new question
    [r] = stage([evolved("7")])
    assert (
        r["reject"]["reason"]
        == "no_reference: the seed's reference answers the question before evolve rewrote it"
    )
    assert json.loads(r["reject"]["raw"]) == {"answer": "7", "solution": None} and engine.calls == []
    mixed, _ = make(["The answer is 7.", "The answer is 7."], only_with_reference=True)
    kept = evolved("7")
    assert mixed([kept]) == [kept] and not kept["reject"]  # a row with no reference of its own: untouched
    parent = row(Q, answer="7")
    parent["meta"]["evolve"] = {"evolved": False}  # no round survived: the seed's own question
    assert not make([RIGHT_SHORT])[0]([parent])[0]["reject"]
