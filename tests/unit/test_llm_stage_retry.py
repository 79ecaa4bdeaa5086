"""LLMStage.complete: on_truncated=retry re-asks only the cut samples, once, at twice the budget."""

from alignfactory.llm.base import Constraint, Sampling
from alignfactory.stages.base import LLMParams, LLMStage, StageContext
from tests.unit.scripted import ScriptedEngine


def stage(engine, on_truncated="retry"):
    ctx = StageContext("probe", 1, seed=0, sampling=Sampling(n=2, max_tokens=16))
    return LLMStage(LLMParams(on_truncated=on_truncated), ctx, engine=engine)


ROWS = [{"id": "a" * 16}, {"id": "b" * 16}]
CONVS = [[{"role": "user", "content": "cut once"}], [{"role": "user", "content": "fine"}]]


def test_retry_replaces_only_incomplete_samples_with_a_doubled_budget():
    engine = ScriptedEngine(truncated_once={"cut once"})
    s = stage(engine)
    outs = s.complete(CONVS, ROWS)
    assert [o.finish_reasons for o in outs] == [["stop", "stop"], ["stop", "stop"]]
    assert outs[0].retried == [0, 1] and outs[1].retried == []
    retry_call = engine.calls[1]
    assert retry_call["sampling"].max_tokens == 32 and retry_call["sampling"].n == 1
    assert len(retry_call["conversations"]) == 2  # the two cut samples of request 0, nothing else
    assert len(set(retry_call["seeds"]) | set(engine.calls[0]["seeds"])) == 4  # fresh seeds
    assert s.retries == 2


def test_a_retry_that_is_cut_again_stays_incomplete_and_reject_mode_never_retries():
    engine = ScriptedEngine(truncated={"cut once"})
    outs = stage(engine).complete(CONVS, ROWS)
    assert not outs[0].complete(0) and outs[0].finish_reason(1) == "length"
    row = {"id": "a" * 16, "reject": None, "meta": {}}
    assert stage(engine).reject_incomplete(row, outs[0], 0, "answer")
    assert row["reject"]["reason"] == "truncated: answer: finish_reason 'length'"
    assert row["reject"]["raw"] == outs[0].texts[0]

    engine = ScriptedEngine(truncated_once={"cut once"})
    outs = stage(engine, "reject").complete(CONVS, ROWS)
    assert len(engine.calls) == 1 and outs[0].finish_reasons == ["length", "length"]


def test_a_constraint_travels_in_sampling_and_into_its_dict():
    c = Constraint.json({"type": "object", "properties": {"score": {"type": "integer"}}})
    s = Sampling(constraint=c)
    assert s.to_dict()["constraint"]["schema"]["properties"]["score"] == {"type": "integer"}
    assert "constraint" not in Sampling().to_dict()  # unconstrained fingerprints unchanged
    assert Constraint.choice(["A", "B"]) == Constraint.choice(("A", "B"))  # hashable, by value
    # property order decides what a grammar generates first: it is part of the fingerprint
    from alignfactory.stages.base import fingerprint

    ab = Constraint.json({"type": "object", "properties": {"a": {}, "b": {}}})
    ba = Constraint.json({"type": "object", "properties": {"b": {}, "a": {}}})
    assert fingerprint(ab.to_dict()) != fingerprint(ba.to_dict())
