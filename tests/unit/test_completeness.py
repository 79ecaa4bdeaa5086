"""Completeness (issue 15 item 1): a text that did not end by itself never becomes training data or a
decision. Each test names the defect it catches on the code before this change."""

from __future__ import annotations

import json

import pytest

from alignfactory import records
from alignfactory.stages.assemble.filter import Filter
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.instag import InsTag
from alignfactory.stages.synthesize.repurpose import Repurpose
from alignfactory.stages.verify.autoif import AutoIF, parse_cases
from alignfactory.stages.verify.exec_feedback import ExecFeedback
from tests.unit.scripted import ScriptedEngine

EN_Q = "Write a polite email asking my landlord to fix the kitchen faucet."
EN_A = "Dear Mr. Smith, I hope you are well. The kitchen faucet has been dripping since Monday."
TAGS = '[{"tag": "email writing", "explanation": "an email"}]'
CUT_TAGS = (
    '[{"tag": "python", "explanation": "code"}, {"tag": "recursion", "explanation": "fib"}, {"tag": "fibon'
)


def row(instr: str, answer: str | None = None, reason: str | None = "input", line: int = 1) -> dict:
    msgs = [{"role": "user", "content": instr}]
    if answer is not None:
        msgs.append(records.assistant(answer, reason))
    return records.new_row(msgs, {"file": "seeds.jsonl", "line": line})


class CutSome(ScriptedEngine):
    """Sample k of a conversation stops at max_tokens when cut(last user text, k, sampling) is true."""

    def __init__(self, cut, **kw):
        super().__init__(**kw)
        self.cut = cut

    def chat(self, conversations, sampling, seeds=None):
        outs = super().chat(conversations, sampling, seeds)
        for conv, o in zip(conversations, outs, strict=True):
            o.finish_reasons = [
                "length" if self.cut(conv[-1]["content"], k, sampling) else r
                for k, r in enumerate(o.finish_reasons)
            ]
        return outs


class AlwaysCut(ScriptedEngine):
    """Every sample, the retry's too, stops at max_tokens (whatever the prompt)."""

    def chat(self, conversations, sampling, seeds=None):
        outs = super().chat(conversations, sampling, seeds)
        for o in outs:
            o.finish_reasons = ["length"] * len(o.texts)
        return outs


def reasons(rows: list[dict]) -> list[str | None]:
    return [r["reject"]["reason"] if r["reject"] else None for r in rows]


# ---- filter -------------------------------------------------------------------------------------


def make_filter(**params) -> Filter:
    return Filter(Filter.Params(**params), StageContext("filter", 3))


def test_filter_reads_the_reason_of_the_text_that_is_there_not_meta_generate():
    # old code: read meta.generate.finish_reason ("stop") after a later stage put a cut text in place
    r = row(EN_Q, EN_A, reason="length")
    r["meta"]["generate"] = {"finish_reason": "stop"}
    (out,) = make_filter()([r])
    assert out["reject"] == {"stage": "filter", "reason": "truncated: finish_reason 'length'"}


def test_filter_keeps_a_whole_text_even_when_meta_generate_says_length():
    # the replaced text (a reference solution, a revision) ended by itself: its own reason decides
    r = row(EN_Q, EN_A, reason="stop")
    r["meta"]["generate"] = {"finish_reason": "length"}
    assert make_filter()([r])[0]["reject"] is None


@pytest.mark.parametrize("reason", [None, "abort", "content_filter"])
def test_filter_missing_or_unknown_reason_is_incomplete(reason):
    # old code: only "length" (and only with drop_truncated) was caught; a missing reason passed
    (out,) = make_filter()([row(EN_Q, EN_A, reason=reason)])
    assert out["reject"]["reason"] == f"incomplete: finish_reason {reason!r}"


def test_filter_message_without_finish_reason_key_is_incomplete():
    r = row(EN_Q, EN_A)
    del r["messages"][-1]["finish_reason"]
    assert make_filter()([r])[0]["reject"]["reason"] == "incomplete: finish_reason None"


def test_filter_input_turns_pass():
    assert make_filter()([row(EN_Q, EN_A, reason="input")])[0]["reject"] is None


# ---- instag -------------------------------------------------------------------------------------


def instag(engine, **params) -> InsTag:
    return InsTag(InsTag.Params(**params), StageContext("instag", 2, seed=7), engine=engine)


@pytest.mark.parametrize("constrains", [True, False])
def test_instag_cut_list_is_truncated_and_rejected_after_one_retry(constrains):
    # old code: the cut list parsed as "json" (two of three objects) and the row was kept
    engine = ScriptedEngine(rule=lambda conv, k, seed: CUT_TAGS, truncated={"x"}, constrains=constrains)
    engine.truncated = {engine_prompt(engine)}
    (out,) = instag(engine, max_tokens=48)([row("x", None)])
    assert out["reject"] == {
        "stage": "instag",
        "reason": "truncated: finish_reason 'length'",
        "raw": CUT_TAGS,
    }
    meta = out["meta"]["instag"]
    assert meta["parse"] == "truncated" and "tags" not in meta and meta["retried"] is True
    assert engine.max_tokens_seen == [48, 96]  # one retry at twice the budget, then no more seeds


def engine_prompt(engine) -> str:
    """The rendered last user turn instag sends for the query "x" (what ScriptedEngine keys on)."""
    probe = instag(ScriptedEngine(rule=lambda conv, k, seed: TAGS))
    return probe.build_messages(row("x"))[0][-1]["content"]


def test_instag_on_truncated_reject_does_not_retry():
    engine = ScriptedEngine(rule=lambda conv, k, seed: CUT_TAGS)
    engine.truncated = {engine_prompt(engine)}
    (out,) = instag(engine, on_truncated="reject", max_tokens=48)([row("x")])
    assert out["reject"]["reason"] == "truncated: finish_reason 'length'"
    assert engine.max_tokens_seen == [48]


def test_instag_cut_once_then_whole_is_kept_from_the_retry():
    engine = ScriptedEngine(rule=lambda conv, k, seed: TAGS)
    engine.truncated_once = {engine_prompt(engine)}
    (out,) = instag(engine, max_tokens=48)([row("x")])
    meta = out["meta"]["instag"]
    assert out["reject"] is None and meta["parse"] == "structured" and meta["path"] == "structured"
    assert meta["finish_reason"] == "stop" and meta["retried"] is True
    assert meta["tags"] == [{"tag": "email writing", "explanation": "an email"}]


def test_instag_free_text_list_left_open_is_truncated_even_when_the_model_stopped():
    open_list = '[{"tag": "python", "explanation": "code"}, {"tag": "recursion"'
    engine = ScriptedEngine(rule=lambda conv, k, seed: open_list, constrains=False)
    (out,) = instag(engine)([row("x")])
    assert out["reject"]["reason"] == "truncated: list left open"
    assert out["meta"]["instag"]["path"] == "free_text: scripted engine set to not constrain"


def test_instag_asks_for_the_tag_list_schema_and_names_it_as_its_output_constraint():
    engine = ScriptedEngine(rule=lambda conv, k, seed: TAGS)
    stage = instag(engine)
    stage([row("x")])
    constraint = engine.calls[0]["sampling"].constraint
    assert constraint is not None and constraint.kind == "json"
    schema = constraint.schema
    assert schema["type"] == "array" and schema["maxItems"] == 3 and schema["minItems"] == 1
    item = schema["items"]
    assert item["required"] == ["tag", "explanation"]
    assert item["properties"]["explanation"]["maxLength"] == 40
    assert InsTag.output_constraints(stage.params) == [constraint]


def test_instag_structured_reply_that_is_not_json_is_unparseable_not_salvaged():
    engine = ScriptedEngine(rule=lambda conv, k, seed: 'tags: "tag": "email"')
    (out,) = instag(engine, retries=0)([row("x")])
    assert out["reject"]["reason"].startswith("unparseable: constrained reply is not JSON")


def test_instag_rows_are_json_serialisable():
    engine = ScriptedEngine(rule=lambda conv, k, seed: TAGS)
    out = instag(engine)([row("x")])
    assert json.loads(json.dumps(out)) == out


# ---- repurpose ----------------------------------------------------------------------------------

DIALOGUE = "User: Can you fix it?\nCharacter: Engines I can fix. Sit down and"


def repurpose(engine, **params) -> Repurpose:
    return Repurpose(Repurpose.Params(**params), StageContext("repurpose", 1), engine=engine)


def source(text: str, kind: str) -> dict:
    r = row(text)
    r["seed"] = {"source_kind": kind}
    return r


def test_repurpose_cut_dialogue_is_rejected_not_a_roleplay_row():
    # old code: the cut reply parsed into turns and its cut last character turn became an SFT target
    engine = AlwaysCut(rule=lambda conv, k, seed: DIALOGUE)
    (out,) = repurpose(engine, max_tokens=32)([source("Mara is a blunt retired pilot.", "profile")])
    assert out["reject"]["reason"] == "truncated: dialogue finish_reason 'length'"
    assert out["reject"]["raw"] == DIALOGUE
    assert engine.max_tokens_seen == [32, 64]  # one on_truncated retry at twice the budget


def test_repurpose_roleplay_turns_and_source_text_carry_their_finish_reasons():
    def rule(conv, k, seed):
        if "role-play" in conv[-1]["content"]:
            return "User: Hi\nCharacter: Hm.\nUser: Fix it.\nCharacter: Fine."
        return "Instruction: Tell a fox fable."

    engine = ScriptedEngine(rule=rule)
    fable, profile = (
        source("The fox called the grapes sour.", "literary"),
        source("Mara, a pilot.", "profile"),
    )
    out = repurpose(engine, levels=["brief"])([fable, profile])
    assert [m.get("finish_reason") for m in out[0]["messages"]] == [None, "input"]
    assert [m.get("finish_reason") for m in out[1]["messages"] if m["role"] == "assistant"] == [
        "stop",
        "stop",
    ]
    assert all(records.response_complete(r) for r in out)


def test_repurpose_cut_instruction_is_not_used_and_the_reason_says_truncated():
    engine = AlwaysCut(rule=lambda conv, k, seed: "Instruction: Tell a fox fable about")
    (out,) = repurpose(engine, levels=["brief"])([source("The fox called the grapes sour.", "document")])
    assert out["reject"]["reason"] == "truncated: brief instruction finish_reason 'length'"


# ---- autoif -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox():
    from sandbox import Limits, Sandbox

    with Sandbox(Limits(wall_s=1.0), workers=2) as sb:
        yield sb


def autoif(sandbox, cut, verifiers, responses, cases=None, **params):
    from tests.unit.test_autoif import CASES
    from tests.unit.test_exec_feedback import CountingSandbox

    def rule(conv, k, seed):
        prompt = conv[-1]["content"]
        if "`evaluate(response)`" in prompt:
            return verifiers[k]
        if "GOOD:" in prompt:
            return cases or CASES
        return responses[k]

    params = {"m": len(verifiers), "n": len(responses), "on_truncated": "reject"} | params
    return AutoIF(
        AutoIF.Params(**params),
        StageContext("autoif", 1, seed=5),
        engine=CutSome(cut, rule=rule),
        sandbox=CountingSandbox(sandbox),
    )


def test_autoif_cut_response_is_neither_chosen_nor_paired(sandbox):
    # old code: "cats are soft." passed every verifier and became the SFT turn although it was cut
    from tests.unit.test_autoif import GOOD_FN, RESPONSES, TASK

    def cut(prompt, k, sampling):
        return prompt == TASK and k == 0

    (out,) = autoif(sandbox, cut, [GOOD_FN], RESPONSES)([row(TASK)])
    meta = out["meta"]["autoif"]
    assert meta["responses_finish_reason"] == ["length", "stop", "stop", "stop"]
    assert meta["pass_rates"] == [1.0, 0.0, 1.0, 0.0]  # recorded, but the cut one takes no part
    assert meta["chosen"] == 2 and out["messages"][-1] == records.assistant("they nap a lot.", "stop")
    assert [p["chosen"] for p in out["pairs"]] == ["they nap a lot."] * 2
    assert {(p["chosen_finish_reason"], p["rejected_finish_reason"]) for p in out["pairs"]} == {
        ("stop", "stop")
    }


def test_autoif_cut_verifier_is_not_run_nor_kept(sandbox):
    from tests.unit.test_autoif import GOOD_FN, RESPONSES, TASK

    def cut(prompt, k, sampling):
        return "`evaluate(response)`" in prompt

    stage = autoif(sandbox, cut, [GOOD_FN], RESPONSES)
    (out,) = stage([row(TASK)])
    (fn,) = out["meta"]["autoif"]["functions"]
    assert fn["status"] == "TRUNCATED" and fn["kept"] is False and fn["finish_reason"] == "length"
    assert out["reject"]["reason"] == "no_valid_verifier" and stage.sandbox.calls == []


def test_autoif_every_response_cut_is_rejected_as_truncated(sandbox):
    from tests.unit.test_autoif import GOOD_FN, RESPONSES, TASK

    def cut(prompt, k, sampling):
        return prompt == TASK

    (out,) = autoif(sandbox, cut, [GOOD_FN], RESPONSES)([row(TASK)])
    assert out["reject"]["reason"] == "truncated: responses finish_reason 'length'"


def test_autoif_parse_cases_drops_the_last_block_of_a_cut_reply():
    text = "GOOD: cats purr\nBAD: Cats Purr\nGOOD: cats are the best pets in the wor"
    assert parse_cases(text) == [
        ("cats purr", True),
        ("Cats Purr", False),
        ("cats are the best pets in the wor", True),
    ]
    assert parse_cases(text, cut=True) == [("cats purr", True), ("Cats Purr", False)]


# ---- exec_feedback ------------------------------------------------------------------------------


def exec_feedback(sandbox, cut, solutions, tests, **params):
    from tests.unit.test_exec_feedback import CountingSandbox

    def rule(conv, k, seed):
        return tests if conv[-1]["content"].startswith("Task:") else solutions[k]

    params = {"k": len(solutions), "on_truncated": "reject"} | params
    engine = CutSome(cut, rule=rule)
    stage = ExecFeedback(
        ExecFeedback.Params(**params),
        StageContext("exec_feedback", 1, seed=3),
        engine=engine,
        sandbox=CountingSandbox(sandbox),
    )
    return stage, engine


def test_exec_feedback_cut_solution_is_not_run_chosen_nor_paired(sandbox):
    # old code: the cut first solution (its code whole, its reply cut) was run and chosen
    from tests.unit.test_exec_feedback import CORRECT_A, CORRECT_B, OFF_BY_ONE, TASK, TESTS

    def cut(prompt, k, sampling):
        return not prompt.startswith("Task:") and k == 0

    stage, _ = exec_feedback(sandbox, cut, [CORRECT_A, CORRECT_B, OFF_BY_ONE], TESTS)
    (out,) = stage([row(TASK)])
    meta = out["meta"]["exec_feedback"]
    assert meta["statuses"][0] == "TRUNCATED" and meta["pass_matrix"][0] is None
    assert meta["finish_reasons"] == ["length", "stop", "stop"] and meta["sandbox_errors"] == []
    assert meta["chosen"] == 1 and out["messages"][-1]["finish_reason"] == "stop"
    assert out["pairs"] and all(CORRECT_A not in (p["chosen"], p["rejected"]) for p in out["pairs"])
    assert all(p["chosen_finish_reason"] == p["rejected_finish_reason"] == "stop" for p in out["pairs"])
    assert stage.sandbox.calls == [2]  # the cut solution never ran


def test_exec_feedback_cut_tests_reply_loses_its_last_line(sandbox):
    from tests.unit.test_exec_feedback import CORRECT_A, TASK

    tests = "assert sum_to(3) == 6\nassert sum_to(0) == 0\nassert sum_to(4) == 1"  # cut inside "10"

    def cut(prompt, k, sampling):
        return prompt.startswith("Task:")

    stage, _ = exec_feedback(sandbox, cut, [CORRECT_A], tests)
    (out,) = stage([row(TASK)])
    meta = out["meta"]["exec_feedback"]
    assert [t["call"] for t in meta["tests"]] == ["sum_to(3)", "sum_to(0)"]
    assert meta["tests_finish_reason"] == "length" and meta["tests_raw"] == tests


def test_exec_feedback_every_solution_cut_is_rejected_as_truncated(sandbox):
    from tests.unit.test_exec_feedback import CORRECT_A, TASK, TESTS

    def cut(prompt, k, sampling):
        return not prompt.startswith("Task:")

    stage, _ = exec_feedback(sandbox, cut, [CORRECT_A, CORRECT_A], TESTS)
    (out,) = stage([row(TASK)])
    assert out["reject"]["reason"] == "truncated: solutions finish_reason 'length'"


def test_exec_feedback_retry_at_twice_the_budget_rescues_a_cut_solution(sandbox):
    from tests.unit.test_exec_feedback import CORRECT_A, TASK, TESTS

    def cut(prompt, k, sampling):  # cut at the first budget, whole at the retry's
        return not prompt.startswith("Task:") and sampling.max_tokens < 128

    stage, engine = exec_feedback(sandbox, cut, [CORRECT_A], TESTS, on_truncated="retry", max_tokens=64)
    (out,) = stage([row(TASK)])
    assert out["reject"] is None and out["meta"]["exec_feedback"]["finish_reasons"] == ["stop"]
    assert engine.max_tokens_seen == [64, 128, 64] and stage.retries == 1  # solutions, retry, tests


# ---- export: the last guard ---------------------------------------------------------------------


def export(tmp_path, rows, **params):
    from alignfactory.stages.assemble.export import Export

    params = {"files": ["jsonl"], "count_tokens": "estimate", "formats": ["sft", "preference"]} | params
    return Export(Export.Params(**params), StageContext("export", 9, run_dir=tmp_path))(rows)


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines()]


def pair(chosen: str, rejected: str, cr: str | None = "stop", rr: str | None = "stop") -> dict:
    return {"chosen": chosen, "rejected": rejected, "stage": "t"} | {
        "chosen_finish_reason": cr,
        "rejected_finish_reason": rr,
    }


def outcomes(rows: list[dict]) -> dict[int, list[str | None]]:
    """Input line -> the outcomes export gives it (discarded candidates are not a line's outcome)."""
    out: dict[int, list] = {}
    for r in rows:
        if not records.discarded_candidate(r):
            out.setdefault(r["source"]["line"], []).append(r["reject"]["reason"] if r["reject"] else None)
    return out


def test_export_cut_answer_never_reaches_sft(tmp_path):
    # old code: export wrote every row with an assistant turn to sft/, cut or not
    rows = [row(EN_Q, "cut ans", reason="length", line=1), row(EN_Q, EN_A, reason="stop", line=2)]
    rows.append(row(EN_Q, "no reason recorded", reason=None, line=3))
    out = export(tmp_path, rows)
    assert [m["messages"][-1]["content"] for m in lines(tmp_path / "sft" / "train.jsonl")] == [EN_A]
    assert reasons(out) == [
        "truncated: response finish_reason 'length'",
        None,
        "incomplete: response finish_reason None",
    ]
    assert out[0]["reject"]["raw"] == "cut ans" and outcomes(out) == {
        1: [reasons(out)[0]],
        2: [None],
        3: [reasons(out)[2]],
    }


def test_export_cut_pair_side_never_reaches_preference_and_goes_to_rejected(tmp_path):
    r = row(EN_Q, EN_A, reason="stop")
    r["pairs"] = [pair("whole", "also whole"), pair("cut", "whole", cr="length"), pair("a", "b", rr=None)]
    out = export(tmp_path, [r])
    prefs = lines(tmp_path / "preference" / "train.jsonl")
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in prefs] == [
        ("whole", "also whole")
    ]
    kept, *dropped = out
    assert (
        kept["reject"] is None
        and kept["pairs"] == [r["pairs"][0]]
        and len(lines(tmp_path / "sft" / "train.jsonl")) == 1
    )
    assert kept["meta"]["export"]["dropped"] == [
        "truncated: pair chosen finish_reason 'length'",
        "incomplete: pair rejected finish_reason None",
    ]
    assert [d["reject"]["reason"] for d in dropped] == kept["meta"]["export"]["dropped"]
    assert [d["reject"]["raw"] for d in dropped] == ["cut", "b"]
    assert all(records.discarded_candidate(d) for d in dropped) and outcomes(out) == {1: [None]}


def test_export_cut_answer_with_whole_pairs_exports_the_pairs_only(tmp_path):
    r = row(EN_Q, "cut ans", reason="length")
    r["pairs"] = [pair("whole", "other")]
    out = export(tmp_path, [r])
    assert lines(tmp_path / "sft" / "train.jsonl") == []
    assert len(lines(tmp_path / "preference" / "train.jsonl")) == 1
    kept, dropped = out
    assert (
        records.response(kept) is None
        and kept["pairs"] == r["pairs"]
        and kept["lineage"]["stage"] == "export"
    )
    assert dropped["reject"]["reason"] == "truncated: response finish_reason 'length'"
    assert records.discarded_candidate(dropped) and outcomes(out) == {1: [None]}


def test_export_pair_without_finish_reasons_is_incomplete(tmp_path):
    r = row(EN_Q)
    r["pairs"] = [{"chosen": "x", "rejected": "y", "stage": "constitution"}]
    (out,) = export(tmp_path, [r])
    assert out["reject"]["reason"] == "incomplete: pair chosen finish_reason None"
    assert lines(tmp_path / "preference" / "train.jsonl") == []


def test_export_sft_only_ignores_pairs_and_keeps_them_on_the_row(tmp_path):
    r = row(EN_Q, EN_A, reason="stop")
    r["pairs"] = [pair("cut", "whole", cr="length")]
    (out,) = export(tmp_path, [r], formats=["sft"])
    assert out["reject"] is None and out["pairs"] == r["pairs"]
