"""reject_sample: sample N responses per prompt, keep the ones whose final answer is verified.

One engine call per batch with sampling.n = N, so the shared prompt is encoded once per row (the
transformers engine prefills it once and expands its KV cache; vLLM's prefix cache does the same).
Each sample's final answer is pulled out with alignfactory.verify.math.extract_answer and judged:

  reference mode    (the default) the row's reference: the seed field `answer_field`, else the final
                    answer of `solution_field`, each read by verify.math.reference_answer exactly as
                    a candidate is read (a GSM8K "#### 72", a MATH solution's last \\boxed{}, "The
                    answer is ..."). A sample is correct when equivalent(its answer, reference). A
                    row with no usable reference is rejected `no_reference` before it is sampled.
  consistency mode  majority vote over the samples' answers (clustered by equivalent), the reference
                    ignored: the winning cluster is correct if its share of all candidates >=
                    min_share and it has >= min_votes members and no other cluster ties it.
  auto              reference mode for rows that offer a reference field (unusable: no_reference),
                    majority vote for rows with none. Only a spec that sets consistency or auto gets
                    a vote: a missing reference never switches a row to one silently.

Completeness: Params are LLMParams, so `on_truncated: retry` (default) asks once more, at twice the
budget, for each sample that did not end by itself. A candidate still incomplete (finish reason not
"stop"; "input" for texts that came with the row) is verdict "truncated": never counted in a vote,
never chosen, never paired. A row whose every candidate is incomplete is rejected `truncated`.

Correct samples are SFT candidates: the row's assistant turn becomes the shortest one (characters;
`choose: first` takes the earliest), with its finish reason on the message ("stop" for a sample,
"input" for the reference solution or the row's own answer). (correct, incorrect) pairs go to the
row's `pairs` column, the shortest correct first, each side's finish reason on the pair
(chosen_finish_reason / rejected_finish_reason). An answer-less sample is "no_answer", incorrect.

    row in:  messages [..., user] (+ seed fields: answer, solution); an existing assistant turn is
             judged as one more candidate (source "input", its recorded finish reason)
    row out: messages [..., user, assistant = chosen + finish_reason], pairs [{"chosen", "rejected",
             "stage", "chosen_finish_reason", "rejected_finish_reason", "reference", ...}]
             meta.reject_sample = {mode, reference, reference_raw, reference_field, samples: [{source,
             sample, text, answer, verdict, finish_reason, retried}], chosen, vote (consistency)}
    rejects: no_reference (raw: the reference fields as given) | truncated | no_answer | tie |
             low_agreement | no_correct_sample, with the raw samples
    only_with_reference: rows that carry neither reference field pass through untouched (for mixed
             pipelines such as sft_data.yaml); a row whose reference is present but unreadable is
             still rejected no_reference.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import Field

from alignfactory import records
from alignfactory.llm.base import COMPLETE, FROM_INPUT
from alignfactory.stages.base import RUBRICS, LLMParams, LLMStage, render
from alignfactory.stages.verify.code_utils import preference_pairs, sampling_with, seed_fields
from alignfactory.verify.math import equivalent, extract_answer, majority_vote, reference_answer

_CJK = re.compile(r"[\u4e00-\u9fff]")


class RejectSample(LLMStage):
    class Params(LLMParams):
        n: int = Field(8, ge=1)  # samples per prompt, all from one engine call
        max_tokens: int | None = Field(None, ge=1)  # overrides sampling.max_tokens (the retry doubles it)
        temperature: float | None = Field(None, ge=0)  # overrides sampling.temperature
        template: str | None = "prompts/math_solution.jinja"  # None: the row's conversation as is
        # reference: the row's reference, else no_reference; consistency: majority vote;
        # auto: reference for rows that offer one, majority vote for rows with none
        mode: Literal["reference", "consistency", "auto"] = "reference"
        answer_field: str = "answer"  # seed field holding the reference answer (a raw solution works too)
        solution_field: str = "solution"  # seed field holding a worked solution (its answer is the
        # reference when answer_field is missing)
        reference_as_candidate: bool = False  # judge that solution as one more candidate
        only_with_reference: bool = False  # rows with neither field pass through untouched
        min_share: float = Field(0.5, gt=0, le=1)  # consistency: winning share of all candidates
        min_votes: int = Field(2, ge=1)  # consistency: candidates in the winning cluster
        choose: Literal["shortest", "first"] = "shortest"
        max_pairs: int = Field(8, ge=0)

    requires = {"messages": "a conversation whose last user turn is a problem with a final answer"}
    adds = ("messages", "pairs", "meta.reject_sample")

    @classmethod
    def template_files(cls, params):
        return [RUBRICS / params.template] if params.template else []

    def __call__(self, rows: list[dict]) -> list[dict]:
        p = self.params
        work = []
        for r in rows:
            given = self.given(r)
            if p.only_with_reference and not given:
                continue  # not this stage's row: untouched
            wants_reference = p.mode == "reference" or (p.mode == "auto" and given)
            if wants_reference and self.reference(r) is None:
                self.no_reference(r)  # rejected in place, before any sampling
                continue
            work.append(r)
        if not work:
            return rows
        sampling = sampling_with(self.ctx.sampling, n=p.n, max_tokens=p.max_tokens, temperature=p.temperature)
        outs = iter(self.complete([self.conversation(r) for r in work], work, sampling))
        done = {id(r): self.judge(r, next(outs)) for r in work}
        return [done.get(id(r), r) for r in rows]

    # ---- one row -------------------------------------------------------------------------------

    def given(self, row: dict) -> dict:
        """The reference fields the row carries for its own question, as given (non-empty ones only);
        none when a stage rewrote the question after the seed line gave them (see rewritten_by)."""
        if rewritten_by(row):
            return {}
        keys = (self.params.answer_field, self.params.solution_field)
        return {k: v for k, v in seed_fields(row, keys).items() if v is not None and str(v).strip()}

    def reference(self, row: dict) -> dict | None:
        """{"answer", "raw", "field"}: the answer field read by reference_answer, else the solution
        field's final answer; None when neither gives a usable answer."""
        given = self.given(row)
        for key in (self.params.answer_field, self.params.solution_field):
            if key in given:
                answer = reference_answer(str(given[key]))
                if answer is not None:
                    return {"answer": answer, "raw": str(given[key]), "field": key}
        return None

    def no_reference(self, row: dict) -> dict:
        """Reject the row as no_reference, raw = the reference fields as the seed line gave them."""
        p = self.params
        keys = (p.answer_field, p.solution_field)
        given, fields = self.given(row), seed_fields(row, keys)
        if rewritten_by(row):
            why = f"the seed's reference answers the question before {rewritten_by(row)} rewrote it"
        elif given:
            why = f"no final answer found in {', '.join(repr(k) for k in given)}"
        else:
            why = f"seed fields {p.answer_field!r} and {p.solution_field!r} missing"
        self.meta(row).update(mode=p.mode, reference=None)
        raw = json.dumps({k: fields.get(k) for k in keys}, ensure_ascii=False, default=str)
        return self.reject(row, f"no_reference: {why}", raw=raw)

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
                "finish_reason": out.finish_reason(k),
                "retried": k in out.retried,
            }
            for k, text in enumerate(out.texts)
        ]
        existing = records.response(row)
        if existing is not None:  # its own recorded reason: "input" from the reader, else its stage's
            reason = records.response_finish_reason(row)
            cands.append({"source": "input", "sample": None, "text": existing, "finish_reason": reason})
        solution = seed_fields(row, (self.params.solution_field,)).get(self.params.solution_field)
        if self.params.reference_as_candidate and solution:
            cands.append(
                {"source": "reference", "sample": None, "text": str(solution), "finish_reason": FROM_INPUT}
            )
        for c in cands:
            c["answer"] = extract_answer(c["text"])
        return cands

    def judge(self, row: dict, out) -> dict:
        p = self.params
        ref = self.reference(row) if p.mode != "consistency" else None
        mode = "reference" if ref is not None else "consistency"
        cands = self.candidates(row, out)
        meta = self.meta(row)
        meta.update(model=self.model_id, mode=mode, n=p.n)
        meta.update(reference=ref and ref["answer"], reference_field=ref and ref["field"])
        if ref is not None and ref["raw"] != ref["answer"]:
            meta["reference_raw"] = ref["raw"]
        meta.update(samples=cands, chosen=None)
        raw = json.dumps([c["text"] for c in cands], ensure_ascii=False)

        for c in cands:  # incomplete first: a cut text is no evidence, whatever answer it shows
            whole = c["finish_reason"] in (COMPLETE, FROM_INPUT)
            c["verdict"] = None if whole else "truncated"
            if whole and c["answer"] is None:
                c["verdict"] = "no_answer"
        usable = [c for c in cands if c["verdict"] != "truncated"]
        meta["incomplete"] = len(cands) - len(usable)
        if not usable:
            reasons = sorted({str(c["finish_reason"]) for c in cands})
            why = f"all {len(cands)} candidates incomplete (finish_reason {', '.join(reasons)})"
            return self.reject(row, f"truncated: {why}", raw=raw)
        if mode == "reference":
            target = ref["answer"]
        else:  # incomplete candidates count in the share's denominator, as no answer
            vote = majority_vote([c["answer"] if c["verdict"] != "truncated" else None for c in cands])
            meta["vote"] = {
                "answer": vote.answer,
                "votes": vote.votes,
                "share": round(vote.share, 4),
                "tie": vote.tie,
                "clusters": [{"answer": cl["answer"], "size": len(cl["members"])} for cl in vote.clusters],
            }
            if vote.answer is None:
                return self.reject(row, "no_answer: no complete sample gave a final answer", raw=raw)
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
        best = cands[correct[0]]
        texts = [c["text"] for c in cands]
        scores = [1.0 if c["verdict"] == "correct" else 0.0 for c in cands]
        reasons = [c["finish_reason"] for c in cands]
        messages = records.with_response(row, best["text"], best["finish_reason"])
        child = records.derive(row, self.ctx.name, messages, meta)
        pairs = preference_pairs(texts, scores, correct, wrong, self.ctx.name, p.max_pairs, reasons=reasons)
        for pair in pairs:
            pair["reference"] = target
        child["pairs"] = list(row.get("pairs") or []) + pairs
        return child


def rewritten_by(row: dict) -> str | None:
    """The stage that rewrote this row's question after it was read (evolve marks its survivors
    meta.<stage>.evolved = true), or None. The seed's answer belongs to the question it came with."""
    for stage, meta in (row.get("meta") or {}).items():
        if isinstance(meta, dict) and meta.get("evolved") is True:
            return stage
    return None
