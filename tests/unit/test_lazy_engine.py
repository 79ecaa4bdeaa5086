"""LLM stages load their engine on first use: a stage with no row to ask loads nothing, a load is
timed as load (not as the shard's work), and a model that cannot load stops the run (EngineError)
instead of rejecting the rows as stage errors."""

import pytest

from alignfactory.llm.base import EngineError, Sampling
from alignfactory.llm.config import ModelConfig
from alignfactory.run.execute import apply_stage
from alignfactory.run.workers import StageWorker
from alignfactory.stages.base import LLMParams, LLMStage, StageContext
from tests.unit.scripted import ScriptedEngine


class Echo(LLMStage):
    """Asks the engine only for rows that have a prompt."""

    def __call__(self, rows):
        ask = [r for r in rows if r.get("prompt")]
        if ask:
            self.complete([[{"role": "user", "content": r["prompt"]}] for r in ask], ask)
        return rows


def ctx(model: ModelConfig) -> StageContext:
    return StageContext("echo", 1, seed=0, sampling=Sampling(max_tokens=8), model=model)


BAD = ModelConfig(backend="transformers", path="/nonexistent/model-dir")


def test_no_row_to_ask_loads_no_model(monkeypatch):
    made = []
    monkeypatch.setattr("alignfactory.llm.make_engine", lambda *a, **k: made.append(a) or ScriptedEngine())
    stage = Echo(LLMParams(), ctx(BAD))
    assert stage([{"id": "a" * 16}]) and made == [] and stage.model_id is None
    stage([{"id": "b" * 16, "prompt": "hi"}])
    stage([{"id": "c" * 16, "prompt": "again"}])
    assert len(made) == 1  # once per stage, on the first row that needs it
    assert stage.model_id == ScriptedEngine().model_id


def test_a_model_that_cannot_load_stops_the_run_not_the_rows():
    stage = Echo(LLMParams(), ctx(BAD))  # building it touches no model
    with pytest.raises(EngineError, match="echo: loading the model failed"):
        apply_stage(stage, [{"id": "a" * 16, "prompt": "hi", "lineage": {"parents": []}}])


def test_the_worker_reports_a_first_use_load_as_load_seconds(monkeypatch, tmp_path):
    import json
    import time

    import numpy as np

    def slow_engine(*a, **k):
        time.sleep(0.3)
        return ScriptedEngine()

    monkeypatch.setattr("alignfactory.llm.make_engine", slow_engine)
    monkeypatch.setattr("alignfactory.run.execute.registry.resolve", lambda name: Echo)
    worker = StageWorker("echo", {}, ctx(BAD), {"dir": str(tmp_path), "tag": None, "last": False})
    rows = [{"id": "a" * 16, "prompt": "hi", "lineage": {"parents": []}, "reject": None}]
    item = {"rows": rows, "outputs": {}}
    batch = {
        "shard": np.array(["shard-00000.jsonl"]),
        "start": np.array([0]),
        "payload": np.array([json.dumps(item)], dtype=object),
    }
    stats = json.loads(worker(batch)["payload"][0])["outputs"]["1"]
    assert stats["load_seconds"] >= 0.3 and stats["seconds"] < 0.3
    again = json.loads(worker(batch)["payload"][0])["outputs"]["1"]
    assert again["load_seconds"] < 0.3  # reported once
