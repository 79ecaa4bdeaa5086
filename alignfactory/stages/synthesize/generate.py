"""generate: sample n responses per prompt from the pipeline's engine.

candidates: false (default): n == 1 -> the row gets an assistant turn (a new id, its parent in
lineage); n > 1 -> n child rows, one per sample, each with meta.generate.sample = k (siblings that
`pairs` groups by prompt). Every assistant turn carries its finish reason
(records.assistant(text, reason)), so later checks read the reason of the text that is there.
candidates: true -> ONE row per prompt, without an assistant turn, carrying the n texts in
`candidates` and their finish reasons in `candidate_finish_reasons` (aligned lists): the shape the
pairwise `judge` compares, and `pairs` then turns the best into the row's answer. This is how the n
samples of one prompt are brought together for pairwise judging (no grouping step needed).

Finish reasons: with on_truncated "retry" (default) a sample that did not end by itself is asked once
more at twice max_tokens (LLMStage.complete). generate does not drop what is still cut: the reason
travels on the message (or in candidate_finish_reasons), and filter / export reject an incomplete
answer, the judge leaves an incomplete candidate out; a later stage that replaces the answer
(reject_sample) can still save the row.
    meta.generate = {model, sample | n, finish_reason(s), prompt_tokens, retried}
"""

from __future__ import annotations

from pydantic import Field

from alignfactory import records
from alignfactory.stages.base import LLMParams, LLMStage
from alignfactory.stages.verify.code_utils import sampling_with


class Generate(LLMStage):
    class Params(LLMParams):
        n: int | None = Field(None, ge=1)  # overrides sampling.n
        max_tokens: int | None = Field(None, ge=1)  # overrides sampling.max_tokens
        temperature: float | None = Field(None, ge=0)
        system: str | None = None  # system prompt put before conversations that have none
        candidates: bool = False  # one row with `candidates` (the n texts) instead of n rows

    requires = {"messages": "a conversation with at least one user turn"}
    adds = ("messages", "lineage", "meta.generate", "candidates", "candidate_finish_reasons")

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
            reasons = [out.finish_reason(k) for k in range(len(out.texts))]
            if p.candidates:
                result.append(self.candidates_row(row, out, reasons))
                continue
            for k, text in enumerate(out.texts):
                meta = {
                    "model": self.engine.model_id,
                    "sample": k,
                    "finish_reason": reasons[k],
                    "prompt_tokens": out.prompt_tokens,
                    "retried": k in out.retried,
                }
                # the system prompt the model saw is part of the SFT example
                messages = self.build_messages(row) + [records.assistant(text, reasons[k])]
                result.append(records.derive(row, self.ctx.name, messages, meta))
        return result

    def candidates_row(self, row: dict, out, reasons: list[str | None]) -> dict:
        """The prompt (as the model saw it) with the n samples as `candidates`: a new row (id, lineage)
        only when the conversation changed (a system prompt added, a trailing answer dropped)."""
        messages = self.build_messages(row)
        meta = {
            "model": self.engine.model_id,
            "n": len(out.texts),
            "finish_reasons": reasons,
            "prompt_tokens": out.prompt_tokens,
            "retried": sorted(out.retried),
        }
        if messages == row["messages"]:
            new = row
            new["meta"][self.ctx.name] = meta
        else:
            new = records.derive(row, self.ctx.name, messages, meta)
        new["candidates"] = list(out.texts)
        new["candidate_finish_reasons"] = reasons
        return new
