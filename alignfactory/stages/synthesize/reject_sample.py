"""reject_sample: sample N responses per prompt, keep the ones whose final answer is verified.

One engine call per batch with sampling.n = N, so the shared prompt is encoded once per row (the
transformers engine prefills it once and expands its KV cache; vLLM's prefix cache does the same).
Each sample's final answer is pulled out with alignfactory.verify.math.extract_answer and judged:

  reference mode    the row has a reference answer (seed field `answer_field`): a sample is correct
                    when equivalent(its answer, reference).
  consistency mode  no reference: majority vote over the samples' answers (clustered by equivalent);
                    the winning cluster is correct if its share of all N samples >= min_share and it
                    has >= min_votes samples and no other cluster ties it.

Correct samples are SFT candidates: the row's assistant turn becomes the shortest one (characters;
`choose: first` takes the earliest). (correct, incorrect) pairs go to the row's `pairs` column, the
shortest correct first. A sample cut by max_tokens (finish_reason "length") is "truncated": neither
chosen nor paired (drop_truncated). An answer-less sample is "no_answer" and counts as incorrect.

    row in:  messages [..., user] (+ seed fields: answer, solution); an existing assistant turn is
             judged as one more candidate (source "input")
    row out: messages [..., user, assistant = chosen], pairs [{"chosen", "rejected", "stage", ...}]
             meta.reject_sample = {mode, reference, samples: [{source, sample, text, answer, verdict,
             finish_reason}], chosen, vote (consistency mode)}
    rejects: no_reference (mode reference) | no_answer | tie | low_agreement | no_correct_sample,
             with the raw samples
    only_with_reference: rows without a reference pass through untouched (for mixed pipelines).
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, Field

from alignfactory import records
from alignfactory.stages.base import RUBRICS, LLMStage, render
from alignfactory.stages.verify.code_utils import preference_pairs, sampling_with, seed_fields
from alignfactory.verify.math import equivalent, extract_answer, majority_vote

_CJK = re.compile(r"[\u4e00-\u9fff]")


class RejectSample(LLMStage):
    class Params(BaseModel, extra="forbid"):
        n: int = Field(8, ge=1)  # samples per prompt, all from one engine call
        max_tokens: int | None = Field(None, ge=1)  # overrides sampling.max_tokens
        temperature: float | None = Field(None, ge=0)  # overrides sampling.temperature
        template: str | None = "prompts/math_solution.jinja"  # None: the row's conversation as is
        mode: Literal["auto", "reference", "consistency"] = "auto"  # auto: reference when present
        answer_field: str = "answer"  # seed field holding the reference answer
        solution_field: str = "solution"  # seed field holding a worked reference solution
        reference_as_candidate: bool = False  # judge that solution as one more candidate
        only_with_reference: bool = False  # rows without a reference answer pass through untouched
        min_share: float = Field(0.5, gt=0, le=1)  # consistency: winning share of all n samples
        min_votes: int = Field(2, ge=1)  # consistency: samples in the winning cluster
        choose: Literal["shortest", "first"] = "shortest"
        drop_truncated: bool = True
        max_pairs: int = Field(8, ge=0)

    requires = {"messages": "a conversation whose last user turn is a problem with a final answer"}
    adds = ("messages", "pairs", "meta.reject_sample")

    @classmethod
    def template_files(cls, params):
        return [RUBRICS / params.template] if params.template else []

    def __call__(self, rows: list[dict]) -> list[dict]:
        p = self.params
        work = [r for r in rows if not (p.only_with_reference and self.reference(r) is None)]
        if not work:
            return rows
        sampling = sampling_with(self.ctx.sampling, n=p.n, max_tokens=p.max_tokens, temperature=p.temperature)
        outs = iter(self.complete([self.conversation(r) for r in work], work, sampling))
        done = {id(r): self.judge(r, next(outs)) for r in work}
        return [done.get(id(r), r) for r in rows]

    # ---- one row -------------------------------------------------------------------------------

    def reference(self, row: dict) -> str | None:
        ref = seed_fields(row, (self.params.answer_field,)).get(self.params.answer_field)
        return None if ref is None or str(ref).strip() == "" else str(ref)

    def conversation(self, row: dict) -> list[dict]:
        msgs = [dict(m) for m in records.prompt_messages(row)]
        if self.params.template:
            q = records.instruction(row)
            text = render(self.params.template, question=q, zh=bool(_CJK.search(q)))
            last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            msgs[last] = {"role": "user", "content": text}
        return msgs

    def candidates(self, row: dict, out) -> list[dict]:
        cands = [
            {
                "source": "sample",
                "sample": k,
                "text": text,
                "finish_reason": out.finish_reasons[k] if k < len(out.finish_reasons) else None,
            }
            for k, text in enumerate(out.texts)
        ]
        existing = records.response(row)
        if existing is not None:
            cands.append({"source": "input", "sample": None, "text": existing, "finish_reason": None})
        solution = seed_fields(row, (self.params.solution_field,)).get(self.params.solution_field)
        if self.params.reference_as_candidate and solution:
            cands.append(
                {"source": "reference", "sample": None, "text": str(solution), "finish_reason": None}
            )
        for c in cands:
            c["answer"] = extract_answer(c["text"])
        return cands

    def judge(self, row: dict, out) -> dict:
        p = self.params
        ref = self.reference(row)
        mode = p.mode if p.mode != "auto" else ("reference" if ref is not None else "consistency")
        cands = self.candidates(row, out)
        meta = self.meta(row)
        meta.update(model=getattr(self.engine, "model_id", None), mode=mode, reference=ref, n=p.n)
        meta.update(samples=cands, chosen=None)
        raw = json.dumps([c["text"] for c in cands], ensure_ascii=False)
        if mode == "reference" and ref is None:
            return self.reject(row, f"no_reference: seed field {p.answer_field!r} missing", raw=raw)

        usable = [c for c in cands if not (p.drop_truncated and c["finish_reason"] == "length")]
        kept = {id(c) for c in usable}
        for c in cands:
            c["verdict"] = "truncated" if id(c) not in kept else "no_answer" if c["answer"] is None else None
        if mode == "reference":
            target = ref
        else:
            vote = majority_vote([c["answer"] for c in usable])
            meta["vote"] = {
                "answer": vote.answer,
                "votes": vote.votes,
                "share": round(vote.share, 4),
                "tie": vote.tie,
                "clusters": [{"answer": cl["answer"], "size": len(cl["members"])} for cl in vote.clusters],
            }
            if vote.answer is None:
                return self.reject(row, "no_answer: no sample gave a final answer", raw=raw)
            if vote.tie:
                return self.reject(row, f"tie: {vote.votes} votes each for several answers", raw=raw)
            if vote.share < p.min_share or vote.votes < p.min_votes:
                why = f"share {vote.share:.2f} (need {p.min_share}), votes {vote.votes} (need {p.min_votes})"
                return self.reject(row, f"low_agreement: {why}", raw=raw)
            target = vote.answer
        for c in usable:
            if c["verdict"] is None:
                c["verdict"] = "correct" if equivalent(c["answer"], target) else "incorrect"

        correct = [i for i, c in enumerate(cands) if c["verdict"] == "correct"]
        wrong = [i for i, c in enumerate(cands) if c["verdict"] in ("incorrect", "no_answer")]
        if not correct:
            return self.reject(row, f"no_correct_sample: 0 of {len(cands)} match {target!r}", raw=raw)
        if p.choose == "shortest":
            correct.sort(key=lambda i: (len(cands[i]["text"]), i))
        meta["chosen"] = correct[0]
        texts = [c["text"] for c in cands]
        scores = [1.0 if c["verdict"] == "correct" else 0.0 for c in cands]
        child = records.derive(row, self.ctx.name, records.with_response(row, texts[correct[0]]), meta)
        pairs = preference_pairs(texts, scores, correct, wrong, self.ctx.name, p.max_pairs)
        for pair in pairs:
            pair["reference"] = target
        child["pairs"] = list(row.get("pairs") or []) + pairs
        return child
