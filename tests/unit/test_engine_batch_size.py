"""resources.batch_size reaches every engine make_engine builds (vllm: max_num_seqs). vllm itself is
replaced by a recording stand-in module, so this runs without vllm and without a model."""

from __future__ import annotations

import sys
import types

import pytest

from alignfactory.llm import make_engine
from alignfactory.llm.config import ModelConfig


@pytest.fixture
def fake_vllm(monkeypatch):
    built = []

    class LLM:
        def __init__(self, **kwargs):
            built.append(kwargs)

    module = types.ModuleType("vllm")
    module.LLM = LLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    return built


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_make_engine_passes_batch_size_to_vllm(fake_vllm, tmp_path, batch_size):
    engine = make_engine(ModelConfig(backend="vllm", path=str(tmp_path)), batch_size=batch_size)
    (kwargs,) = fake_vllm
    assert kwargs["max_num_seqs"] == batch_size
    assert kwargs["model"] == str(tmp_path) and engine.model_id == str(tmp_path)


def test_stage_context_batch_size_reaches_vllm(fake_vllm, tmp_path):
    """The path a pipeline takes: resources.batch_size -> StageContext -> LLMStage -> make_engine."""
    from alignfactory.stages.base import StageContext
    from alignfactory.stages.synthesize.generate import Generate

    model = ModelConfig(backend="vllm", path=str(tmp_path))
    stage = Generate(Generate.Params(), StageContext("generate", 1, model=model, batch_size=5))
    assert fake_vllm == []  # the engine loads on first use
    assert stage.engine is not None
    assert fake_vllm[0]["max_num_seqs"] == 5
