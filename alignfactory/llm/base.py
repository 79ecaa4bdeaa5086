"""The engine protocol every backend implements, and the value objects it speaks.

    engine.chat(conversations, sampling, seeds) -> list[Completion]   # input order kept

A conversation is an OpenAI chat list: [{"role": "system"|"user"|"assistant", "content": str}].
`seeds[i]` is the seed of request i; stages derive it from (spec seed, row id), so two replicas
never draw the same samples for different rows and a re-run draws the same ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    n: int = 1  # samples per conversation
    max_tokens: int = 256  # new tokens per sample
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.95
    seed: int = 0  # base seed; per-request seeds come from request_seed()
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    texts: list[str]  # n samples, in sample order
    prompt_tokens: int = 0  # tokens of the rendered prompt (counted once, not per sample)
    completion_tokens: int = 0  # new tokens over all n samples
    finish_reasons: list[str] = field(default_factory=list)  # "stop" | "length", per sample


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
