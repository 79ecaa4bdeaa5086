"""VLLMEngine with the embedded model on a CUDA GPU (skipped without CUDA or vllm)."""

from __future__ import annotations

from alignfactory.llm import make_engine, resolve_backend
from alignfactory.llm.base import Sampling
from alignfactory.llm.config import ModelConfig
from tests.gpu.conftest import NEEDS_CUDA_AND_VLLM

pytestmark = NEEDS_CUDA_AND_VLLM


def conv(q):
    return [{"role": "user", "content": q}]


def test_auto_picks_vllm_on_gpu():
    assert resolve_backend(ModelConfig()) == "vllm"


def test_vllm_gpu_embedded_model():
    eng = make_engine(ModelConfig(gpu_memory_utilization=0.3))
    assert eng.__class__.__name__ == "VLLMEngine"
    qs = ["What is 2+2?", "Name one primary color.", "What is the capital of France?"]
    g = eng.chat([conv(q) for q in qs], Sampling(max_tokens=32, temperature=0), [1, 2, 3])
    assert "4" in g[0].texts[0] and "paris" in g[2].texts[0].lower()
    s = Sampling(n=4, max_tokens=32, temperature=1.0)
    a = eng.chat([conv(q) for q in qs], s, [7, 8, 9])
    b = eng.chat([conv(q) for q in qs[::-1]], s, [9, 8, 7])
    assert [o.texts for o in a] == [o.texts for o in b[::-1]]
    assert all(len(o.texts) == 4 and len(set(o.texts)) > 1 and o.completion_tokens > 0 for o in a)
