"""generate: sample n responses per prompt from the pipeline's engine.

n == 1 -> the row gets an assistant turn (a new id, its parent in lineage); n > 1 -> n child rows,
one per sample, each with meta.generate.sample = k. The raw text is the response itself.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from alignfactory import records
from alignfactory.stages.base import LLMStage
from alignfactory.stages.verify.code_utils import sampling_with


class Generate(LLMStage):
    class Params(BaseModel, extra="forbid"):
        n: int | None = Field(None, ge=1)  # overrides sampling.n
        max_tokens: int | None = Field(None, ge=1)  # overrides sampling.max_tokens
        temperature: float | None = Field(None, ge=0)
        system: str | None = None  # system prompt put before conversations that have none

    requires = {"messages": "a conversation with at least one user turn"}
    adds = ("messages", "lineage", "meta.generate")

    def build_messages(self, row: dict) -> list[dict]:
        msgs = records.prompt_messages(row)
        if self.params.system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": self.params.system}] + msgs
        return msgs

    def __call__(self, rows: list[dict]) -> list[dict]:
        p = self.params
        sampling = self.ctx.sampling
        sampling = sampling_with(sampling, n=p.n, max_tokens=p.max_tokens, temperature=p.temperature)
        outs = self.complete([self.build_messages(r) for r in rows], rows, sampling)
        result = []
        for row, out in zip(rows, outs, strict=True):
            for k, text in enumerate(out.texts):
                meta = {
                    "model": self.engine.model_id,
                    "sample": k,
                    "finish_reason": out.finish_reasons[k] if k < len(out.finish_reasons) else None,
                    "prompt_tokens": out.prompt_tokens,
                }
                # the system prompt the model saw is part of the SFT example
                messages = self.build_messages(row) + [{"role": "assistant", "content": text}]
                result.append(records.derive(row, self.ctx.name, messages, meta))
        return result
