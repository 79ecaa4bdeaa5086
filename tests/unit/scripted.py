"""ScriptedEngine: a test engine speaking alignfactory.llm.base.Engine, with no model behind it.

    engine = ScriptedEngine({"What is 2+2?": "4"})           # last user text -> reply
    engine = ScriptedEngine({"Name two colors.": ["red", "blue"]})  # sample k gets item k
    engine = ScriptedEngine(rule=lambda conv, k, seed: ...)  # anything else, computed

Unscripted prompts get `default_reply(last_user_text, k)`. Every call is recorded in `calls`
(conversations deep-copied, sampling, seeds) so tests can check what a stage sent. Token counts
are whitespace words (see `count_tokens`), so tests can compute the expected numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from alignfactory.llm.base import Completion, EngineError, Sampling


def count_tokens(text: str) -> int:
    return len(text.split())


def last_user(conversation: list[dict]) -> str:
    for m in reversed(conversation):
        if m["role"] == "user":
            return m["content"]
    return ""


def default_reply(prompt: str, k: int) -> str:
    return f"Reply {k} to: {prompt}"


class ScriptedEngine:
    model_id = "scripted"

    def __init__(
        self,
        script: dict[str, str | list[str]] | None = None,
        rule: Callable[[list[dict], int, int | None], str] | None = None,
        truncated: set[str] | None = None,  # prompts whose samples finish with "length"
        fail_on: dict[str, BaseException] | None = None,  # prompt -> exception raised by chat()
        engine_error: str | None = None,  # when set, every call raises EngineError(engine_error)
        constrains: bool = True,  # report sampling.constraint as enforced (the replies are scripted)
        truncated_once: set[str] | None = None,  # prompts cut ("length") unless max_tokens was raised
    ):
        self.script = dict(script or {})
        self.rule = rule
        self.truncated = set(truncated or ())
        self.fail_on = dict(fail_on or {})
        self.engine_error = engine_error
        self.constrains = constrains
        self.truncated_once = set(truncated_once or ())
        self.max_tokens_seen: list[int] = []
        self.calls: list[dict] = []

    def text(self, conversation: list[dict], k: int, seed: int | None) -> str:
        prompt = last_user(conversation)
        if prompt in self.script:
            scripted = self.script[prompt]
            return scripted[k] if isinstance(scripted, list) else scripted
        if self.rule is not None:
            return self.rule(conversation, k, seed)
        return default_reply(prompt, k)

    def chat(
        self, conversations: list[list[dict]], sampling: Sampling, seeds: list[int] | None = None
    ) -> list[Completion]:
        self.max_tokens_seen.append(sampling.max_tokens)
        self.calls.append(
            {
                "conversations": copy.deepcopy(conversations),
                "sampling": sampling,
                "seeds": None if seeds is None else list(seeds),
            }
        )
        if self.engine_error is not None:
            raise EngineError(self.engine_error)
        if seeds is not None and len(seeds) != len(conversations):
            raise AssertionError(f"{len(seeds)} seeds for {len(conversations)} conversations")
        for conv in conversations:
            if last_user(conv) in self.fail_on:
                raise self.fail_on[last_user(conv)]
        outs = []
        for i, conv in enumerate(conversations):
            seed = None if seeds is None else seeds[i]
            texts = [self.text(conv, k, seed) for k in range(sampling.n)]
            reason = "length" if last_user(conv) in self.truncated else "stop"
            if last_user(conv) in self.truncated_once and not self.raised(sampling):
                reason = "length"
            constrained = sampling.constraint is not None and self.constrains
            outs.append(
                Completion(
                    texts=texts,
                    prompt_tokens=sum(count_tokens(m["content"]) for m in conv),
                    completion_tokens=sum(count_tokens(t) for t in texts),
                    finish_reasons=[reason] * len(texts),
                    constrained=constrained,
                    unconstrained_why=None
                    if constrained or sampling.constraint is None
                    else "scripted engine set to not constrain",
                )
            )
        return outs

    def raised(self, sampling: Sampling) -> bool:
        """True when this call's max_tokens is above the first one seen (a retry with a bigger budget)."""
        return sampling.max_tokens > self.max_tokens_seen[0]
