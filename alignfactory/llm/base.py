"""The engine protocol every backend implements, and the value objects it speaks.

    engine.chat(conversations, sampling, seeds) -> list[Completion]   # input order kept

A conversation is an OpenAI chat list: [{"role": "system"|"user"|"assistant", "content": str}].
`seeds[i]` is the seed of request i; stages derive it from (spec seed, row id), so two replicas
never draw the same samples for different rows and a re-run draws the same ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

# The one finish reason that means "the model ended the text itself". Anything else ("length",
# "abort", "content_filter", a missing reason) is incomplete: never training data or a decision.
COMPLETE = "stop"
# An assistant turn that came with the input (a seed's reference output): not generated, so no stop.
FROM_INPUT = "input"


def is_complete(reason: str | None) -> bool:
    return reason == COMPLETE


@dataclass(frozen=True)
class Constraint:
    """The shape an output must take: a JSON schema, one of a few strings, or a regex.

    Engines that can constrain decoding enforce it (vLLM structured outputs, an OpenAI-compatible
    `response_format`, a transformers logits processor); one that cannot returns free text with
    Completion.constrained False, and the stage parses it as free text, recording why.
    Built with Constraint.json(schema) / .choice([...]) / .regex(r"..."); frozen and hashable
    (the schema is kept as canonical JSON text) so it can live inside a Sampling.
    """

    kind: Literal["json", "choice", "regex"]
    # JSON text of the schema (kind "json"), keys in the caller's order: a grammar generates an
    # object's properties in schema order, so {"reason", "score"} and {"score", "reason"} differ.
    schema_json: str | None = None
    choices: tuple[str, ...] = ()  # kind "choice"
    pattern: str | None = None  # kind "regex"

    @classmethod
    def json(cls, schema: dict) -> Constraint:
        return cls("json", schema_json=json.dumps(schema, ensure_ascii=False))

    @classmethod
    def choice(cls, options) -> Constraint:
        return cls("choice", choices=tuple(options))

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls("regex", pattern=pattern)

    @property
    def schema(self) -> dict | None:
        return json.loads(self.schema_json) if self.schema_json is not None else None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "schema": self.schema,
            # the text as given: fingerprints hash with sorted keys, and a grammar generates
            # properties in schema order, so two orders must not fingerprint alike
            "schema_json": self.schema_json,
            "choices": list(self.choices),
            "regex": self.pattern,
        }


@dataclass(frozen=True)
class Sampling:
    n: int = 1  # samples per conversation
    max_tokens: int = 256  # new tokens per sample
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.95
    seed: int = 0  # base seed; per-request seeds come from request_seed()
    stop: tuple[str, ...] = ()
    constraint: Constraint | None = None  # output shape; stages set it per call (see Constraint)
    # Stop a sample early once its last `stop_loops` tokens already occurred twice before in it: a
    # degenerate loop that would run to max_tokens and be rejected as cut anyway. Its finish reason is
    # "repetition" (incomplete: never data). 0 = off. The transformers engine enforces it; vLLM and
    # servers let the loop run to max_tokens ("length"), which rejects it the same way, later.
    stop_loops: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.stop_loops:
            d.pop("stop_loops")  # fingerprints of specs that never set it stay as they were
        if self.constraint is None:
            d.pop("constraint")  # keeps fingerprints of unconstrained sampling as they were
        else:
            d["constraint"] = self.constraint.to_dict()
        return d


@dataclass
class Completion:
    texts: list[str]  # n samples, in sample order
    prompt_tokens: int = 0  # tokens of the rendered prompt (counted once, not per sample)
    completion_tokens: int = 0  # new tokens over all n samples
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length" | ..., per sample
    # True when the engine enforced sampling.constraint; False when it had none or could not (then
    # `unconstrained_why` says why, e.g. "server rejected response_format: 400 ...").
    constrained: bool = False
    unconstrained_why: str | None = None
    retried: list[int] = field(default_factory=list)  # samples re-asked with a larger budget

    def finish_reason(self, k: int = 0) -> str | None:
        return self.finish_reasons[k] if k < len(self.finish_reasons) else None

    def complete(self, k: int = 0) -> bool:
        return is_complete(self.finish_reason(k))


class Engine(Protocol):
    model_id: str  # what the fingerprint records: a path, hub id, or "embedded:smollm2-135m-instruct"

    def chat(
        self, conversations: list[list[dict]], sampling: Sampling, seeds: list[int] | None = None
    ) -> list[Completion]: ...


def seeds_for(conversations: list, sampling: Sampling, seeds: list[int] | None) -> list[int]:
    """The caller's per-request seeds, checked, or distinct ones derived from sampling.seed."""
    if seeds is None:
        return [request_seed(sampling.seed, f"request:{i}") for i in range(len(conversations))]
    if len(seeds) != len(conversations):
        raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
    return list(seeds)


def request_seed(base_seed: int, key: str) -> int:
    """A 31-bit seed for one request from the spec seed and a stable key (row id, sample index)."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class EngineError(RuntimeError):
    """The engine itself failed (auth, connection, out of memory): the run stops, rows stay unprocessed
    and resumable. Any other exception inside a stage is blamed on the rows and isolated per row."""
