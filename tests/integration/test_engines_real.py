"""The real embedded SmolLM2-135M-Instruct through TransformersEngine (CPU, fp32), and the embedder.

Small max_tokens keep this file short on 2 quiet cores (plus the one-time GGUF conversion, ~35 s,
once per cache directory). Concurrent conversion is tested with a fake converter in tests/unit."""

from __future__ import annotations

import time

import pytest

from alignfactory.llm import make_engine
from alignfactory.llm.base import Sampling
from alignfactory.llm.config import ModelConfig
from alignfactory.llm.embedded import EMBEDDED_MODEL_ID, embedded_model_dir

QUESTIONS = [
    "What is 2+2?",
    "Name one primary color.",
    "Write one sentence about the ocean, the wind, the rain and the mountains far away.",
    "Say hello.",
    "What is the capital of France?",
]


def conv(q):
    return [{"role": "user", "content": q}]


@pytest.fixture(scope="module")
def engine():
    eng = make_engine(ModelConfig(backend="transformers", threads=2), batch_size=4)
    assert eng.__class__.__name__ == "TransformersEngine"
    return eng


def test_conversion_is_cached_and_complete():
    first = embedded_model_dir()  # converts if this cache is empty
    t1 = time.perf_counter()
    second = embedded_model_dir()
    assert second == first and time.perf_counter() - t1 < 0.5  # cached: no reconversion
    names = {p.name for p in first.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith(".") and n != ".alignfactory-converted" for n in names)


def test_engine_metadata(engine):
    assert engine.model_id == EMBEDDED_MODEL_ID
    assert engine.threads == 2 and 0 < engine.load_seconds < 60


def test_greedy_in_order_deterministic_and_batch_invariant(engine):
    s = Sampling(n=2, max_tokens=16, temperature=0)
    seeds = [11, 12, 13, 14, 15]
    outs = engine.chat([conv(q) for q in QUESTIONS], s, seeds)
    assert len(outs) == len(QUESTIONS)
    for o in outs:
        assert len(o.texts) == 2 and o.texts[0] == o.texts[1] and o.texts[0].strip()
        assert o.prompt_tokens > 0 and 0 < o.completion_tokens <= 2 * 16
        assert all(r in ("stop", "length") for r in o.finish_reasons)
    assert "4" in outs[0].texts[0]  # answers belong to their questions (input order)
    assert "paris" in outs[4].texts[0].lower()
    # the same request alone, and in a reversed batch, gives the same text
    alone = engine.chat([conv(QUESTIONS[2])], s, [13])[0]
    assert alone.texts == outs[2].texts
    rev = engine.chat([conv(q) for q in QUESTIONS[::-1]], s, seeds[::-1])
    assert [o.texts for o in rev[::-1]] == [o.texts for o in outs]


def test_sampling_seeds_n_and_batch_invariance(engine):
    s = Sampling(n=3, max_tokens=16, temperature=1.0, top_p=0.95)
    qs = [conv(q) for q in QUESTIONS[:3]]
    a = engine.chat(qs, s, [1, 2, 3])
    b = engine.chat(qs, s, [1, 2, 3])
    assert [o.texts for o in a] == [o.texts for o in b]  # same seeds -> same samples
    for o in a:
        assert len(o.texts) == 3 and len(set(o.texts)) > 1  # n samples differ from each other
        assert len(o.finish_reasons) == 3 and 0 < o.completion_tokens <= 3 * 16
    c = engine.chat(qs, s, [101, 102, 103])
    assert [o.texts for o in c] != [o.texts for o in a]  # other seeds -> other samples
    # a request's samples do not depend on its batch-mates (see transformers_engine docstring)
    alone = engine.chat([qs[1]], s, [2])[0]
    assert alone.texts == a[1].texts


def test_max_tokens_and_stop_strings(engine):
    q = [conv("Count from 1 to 30.")]
    [o] = engine.chat(q, Sampling(max_tokens=5, temperature=0), [0])
    assert o.finish_reasons == ["length"] and o.completion_tokens == 5
    [full] = engine.chat(q, Sampling(max_tokens=24, temperature=0), [0])
    text = full.texts[0]
    assert text.startswith(o.texts[0]) and full.completion_tokens > 5
    stop = text.split()[len(text.split()) // 2]  # a string the greedy answer is known to contain
    [st] = engine.chat(q, Sampling(max_tokens=24, temperature=0, stop=("@@never@@", stop)), [0])
    assert st.finish_reasons == ["stop"] and st.texts[0] == text[: text.find(stop)]
    assert 0 < st.completion_tokens < full.completion_tokens


def test_max_model_len_caps_generation():
    eng = make_engine(ModelConfig(backend="transformers", threads=2, max_model_len=40), batch_size=2)
    prompt = eng.render(conv("Hi"))
    [o] = eng.chat([conv("Hi")], Sampling(max_tokens=30, temperature=0), [0])
    assert o.prompt_tokens == len(prompt) and o.completion_tokens <= 40 - len(prompt)


def test_embedder_encodes_normalized_vectors():
    import numpy as np

    from alignfactory.llm.embed import Embedder

    emb = Embedder(batch_size=2)
    v = emb.encode(["a cat sits on the mat", "a cat sat on a mat", "quarterly revenue fell sharply"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    sims = v @ v.T
    assert sims[0, 1] > 0.7 > 0.3 > sims[0, 2]
    assert emb.encode([]).shape == (0, 384)
