"""autoif: instruction-following data checked by verification functions (AutoIF, Qwen team).

For an instruction with a verifiable constraint ("answer in exactly three bullet points", "under 50
words", "回答中必须包含……"), in two phases per batch:

  1. The model writes M functions `evaluate(response) -> bool` and, in a second prompt, example
     responses labelled GOOD:/BAD:. Cross-validation in the sandbox: every function runs on every
     example (kind="call", entry_point="evaluate"); a function is kept if its accuracy on the examples
     >= threshold. Cross-validation needs at least min_cases examples, of both labels (else a
     `return True` would score 100%): without them no model-written function is kept.
     A seed line may carry a reference verifier, `"verifier": "def evaluate(response): ..."`: it is
     always kept (it is the user's own definition of the constraint); its accuracy on the model's
     examples is recorded too, as a measure of how good those examples were.
  2. For rows with a kept function, N responses are sampled for the instruction itself and every kept
     function runs on every response -> a (kept functions x N) pass matrix; a response's pass rate is
     the fraction of kept functions that return True for it.

    row out: messages [..., user, assistant = the first response passing every kept function]
             pairs [{"chosen": pass rate >= 0.5, "rejected": pass rate == 0, ...}]
             meta.autoif = {functions: [{source, code, status, accuracy, kept}], cv_matrix, cases,
                            kept, responses, responses_source, pass_matrix, pass_rates, chosen,
                            verifiers_raw, cases_raw}
    rejects: no_valid_verifier | sandbox_error | no_passing_response (nothing passes and no pair)

A row with no fully passing response but with pairs keeps its pairs (preference data only, no
assistant turn). A verifier SANDBOX_ERROR is never counted against the function or the responses:
that function is left out (and recorded in meta).

Completeness (after the on_truncated retry at twice the budget): a verifier reply that did not end by
itself is not run (status TRUNCATED, never kept: a cut function is no judge); from a cut examples
reply the last labelled block is dropped (it may be cut mid-text); a cut response is neither chosen
nor paired (meta.autoif.responses_finish_reason; its pass rate is still recorded). The chosen
response carries its finish reason on the assistant turn, pairs carry chosen_finish_reason /
rejected_finish_reason ("input" for the seed's reference response).
"""

from __future__ import annotations

import re

from pydantic import Field

from alignfactory import records
from alignfactory.stages.assemble.filter import incomplete_reason
from alignfactory.stages.base import RUBRICS, render
from alignfactory.stages.verify import code_utils as cu

LABEL = re.compile(
    r"^[\s>*\-\d.)]*\**\s*(GOOD|BAD|PASS|FAIL|FOLLOWS|BREAKS)\s*\**\s*[:：\-]\**\s*(.*)$", re.I | re.M
)
TRUE_LABELS = ("good", "pass", "follows")


class AutoIF(cu.SandboxStage):
    class Params(cu.SandboxParams):
        m: int = Field(4, ge=1)  # verification functions sampled per instruction
        n: int = Field(4, ge=1)  # responses sampled per instruction
        max_cases: int = Field(8, ge=1)  # labelled examples kept for cross-validation
        min_cases: int = Field(2, ge=2)
        threshold: float = Field(0.8, ge=0, le=1)  # accuracy a model-written function needs to be kept
        max_pairs: int = Field(8, ge=0)
        max_tokens: int | None = Field(None, ge=1)  # verifiers and examples; None = spec sampling
        response_max_tokens: int | None = Field(None, ge=1)  # sampled responses
        temperature: float | None = Field(None, ge=0)
        include_reference: bool = False  # the seed's check.pass/check.fail: examples + one more response
        verifier_template: str = "prompts/autoif_verifier.jinja"
        cases_template: str = "prompts/autoif_cases.jinja"

    requires = {
        "messages": "a conversation whose last user turn is an instruction with a verifiable constraint"
    }
    adds = ("messages", "pairs", "meta.autoif")

    @classmethod
    def template_files(cls, params):
        return [RUBRICS / params.verifier_template, RUBRICS / params.cases_template]

    def __call__(self, rows: list[dict]) -> list[dict]:
        p, base = self.params, self.ctx.sampling
        # phase 1: functions + examples -> cross-validation (one sandbox call for the batch)
        prompts = [records.instruction(r) for r in rows]
        convs_f = [self.conversation(p.verifier_template, t) for t in prompts]
        convs_c = [self.conversation(p.cases_template, t) for t in prompts]
        s_f = cu.sampling_with(base, n=p.m, max_tokens=p.max_tokens, temperature=p.temperature)
        s_c = cu.sampling_with(base, n=1, max_tokens=p.max_tokens, temperature=p.temperature)
        outs_f = self.complete(convs_f, rows, s_f, what="verifiers")
        outs_c = self.complete(convs_c, rows, s_c, what="cases")
        states = [self.verifiers(r, f, c) for r, f, c in zip(rows, outs_f, outs_c, strict=True)]
        for s, verdicts in zip(states, self.run_groups([s["cv_jobs"] for s in states]), strict=True):
            s["cv_verdicts"] = verdicts
            self.cross_validate(s)

        # phase 2: responses for rows with a kept function -> scoring (one sandbox call)
        live = [i for i, s in enumerate(states) if s["kept"]]
        if live:
            s_r = cu.sampling_with(base, n=p.n, max_tokens=p.response_max_tokens, temperature=p.temperature)
            convs_r = [records.prompt_messages(rows[i]) for i in live]
            outs_r = self.complete(convs_r, [rows[i] for i in live], s_r, what="responses")
            for i, out in zip(live, outs_r, strict=True):
                ref = [states[i]["reference_response"]] if states[i]["reference_response"] else []
                states[i]["responses"] = out.texts + ref
                states[i]["responses_source"] = ["model"] * len(out.texts) + ["reference"] * len(ref)
                reasons = [out.finish_reason(k) for k in range(len(out.texts))]
                states[i]["responses_finish_reason"] = reasons + [records.FROM_INPUT] * len(ref)
                states[i]["score_jobs"] = self.score_jobs(states[i])
            scored = self.run_groups([states[i]["score_jobs"] for i in live])
            for i, verdicts in zip(live, scored, strict=True):
                states[i]["score_verdicts"] = verdicts
        return [self.finish(r, s) for r, s in zip(rows, states, strict=True)]

    def conversation(self, template: str, instruction: str) -> list[dict]:
        text = render(template, instruction=instruction, n_cases=self.params.max_cases)
        return [{"role": "user", "content": text}]

    # ---- phase 1 --------------------------------------------------------------------------------

    def verifiers(self, row: dict, out_f, out_c) -> dict:
        """Functions (model-written, then the seed's reference), the parsed examples, the CV jobs.
        A verifier reply that did not end by itself gets no code (status TRUNCATED)."""
        from sandbox import Case, Job

        texts, cases_text = out_f.texts, out_c.texts[0]
        functions = [
            {
                "source": "model",
                "code": None if incomplete_reason(out_f.finish_reason(k)) else evaluate_code(t),
                "finish_reason": out_f.finish_reason(k),
            }
            for k, t in enumerate(texts)
        ]
        reference = cu.seed_fields(row, ("verifier",)).get("verifier")
        if isinstance(reference, str) and reference.strip():
            functions.append({"source": "reference", "code": evaluate_code(reference) or reference})
        reference_cases = self.reference_cases(row)
        known = {t for t, _ in reference_cases}
        cases_cut = incomplete_reason(out_c.finish_reason(0)) is not None
        model_cases = [c for c in parse_cases(cases_text, cut=cases_cut) if c[0] not in known]
        cases = reference_cases + model_cases[: max(self.params.max_cases - len(reference_cases), 0)]
        labels = {label for _, label in cases}
        usable = len(cases) >= self.params.min_cases and labels == {True, False}
        tests = [Case(args=[text], expected=label) for text, label in cases]
        jobs = [
            (i, Job(code=f["code"], kind="call", entry_point="evaluate", tests=tests))
            for i, f in enumerate(functions)
            if f["code"] and usable
        ]
        return {
            "functions": functions,
            "cases": cases,
            "n_reference_cases": len(reference_cases),
            "reference_response": self.reference_response(row),
            "cases_usable": usable,
            "cv_jobs": [j for _, j in jobs],
            "cv_index": [i for i, _ in jobs],
            "verifiers_raw": texts,
            "cases_raw": cases_text,
            "cases_finish_reason": out_c.finish_reason(0),
        }

    def reference_cases(self, row: dict) -> list[tuple[str, bool]]:
        check = cu.seed_fields(row, ("check",)).get("check") if self.params.include_reference else None
        if not isinstance(check, dict):
            return []
        found = [(check.get(k), k == "pass") for k in ("pass", "fail")]
        return [(t, label) for t, label in found if isinstance(t, str) and t.strip()]

    def reference_response(self, row: dict) -> str | None:
        return next((t for t, label in self.reference_cases(row) if label), None)

    def cross_validate(self, s: dict) -> None:
        by_fn = dict(zip(s["cv_index"], s["cv_verdicts"], strict=True))
        s["cv_matrix"] = []
        for i, f in enumerate(s["functions"]):
            v = by_fn.get(i)
            cut = incomplete_reason(f.get("finish_reason", "input"))  # the reference came with the input
            f["status"] = (
                "TRUNCATED" if cut else "UNPARSEABLE" if not f["code"] else v.status.value if v else "NOT_RUN"
            )
            vector = list(v.pass_vector) if v and f["status"] != "SANDBOX_ERROR" else None
            f["accuracy"] = sum(vector) / len(vector) if vector else None
            s["cv_matrix"].append(vector)
            model_ok = f["accuracy"] is not None and f["accuracy"] >= self.params.threshold
            model_ok = model_ok and all(vector[: s["n_reference_cases"]])  # ground truth: all right
            f["kept"] = bool(f["code"]) and (f["source"] == "reference" or model_ok)
        s["kept"] = [i for i, f in enumerate(s["functions"]) if f["kept"]]

    # ---- phase 2 --------------------------------------------------------------------------------

    def score_jobs(self, s: dict) -> list:
        from sandbox import Case, Job

        tests = [Case(args=[r], expected=True) for r in s["responses"]]  # PASS = evaluate(r) is True
        return [
            Job(code=s["functions"][i]["code"], kind="call", entry_point="evaluate", tests=tests)
            for i in s["kept"]
        ]

    def finish(self, row: dict, s: dict) -> dict:
        responses = s.get("responses", [])
        finish = s.get("responses_finish_reason", [])
        verdicts = s.get("score_verdicts", [])
        matrix = [None if v.status.value == "SANDBOX_ERROR" else list(v.pass_vector) for v in verdicts]
        judged = [m for m in matrix if m is not None]
        rates = [sum(m[j] for m in judged) / len(judged) for j in range(len(responses))] if judged else []
        meta = self.meta(row)
        meta.update(
            model=self.model_id,
            functions=s["functions"],
            cases=[{"response": t, "label": lab} for t, lab in s["cases"]],
            cases_usable=s["cases_usable"],
            cv_matrix=s["cv_matrix"],
            kept=s["kept"],
            responses=responses,
            responses_source=s.get("responses_source", []),
            responses_finish_reason=finish,
            pass_matrix=matrix,  # kept functions x responses; None = SANDBOX_ERROR for that function
            statuses=[v.status.value for v in verdicts],
            pass_rates=rates,
            chosen=None,
            verifiers_raw=s["verifiers_raw"],
            cases_raw=s["cases_raw"],
            cases_finish_reason=s["cases_finish_reason"],
        )
        if not s["kept"]:
            return self.reject(row, "no_valid_verifier")
        if not judged:
            return self.reject(row, "sandbox_error")
        # a response that did not end by itself is neither chosen nor paired (its rate stays in meta)
        usable = [None if incomplete_reason(finish[j]) else r for j, r in enumerate(rates)]
        passing = [j for j, r in enumerate(usable) if r == 1.0]
        pairs = build_pairs(responses, usable, self.ctx.name, self.params.max_pairs, finish)
        if not passing and not pairs:
            cuts = [incomplete_reason(r) for r in finish if incomplete_reason(r)]
            if cuts and len(cuts) == len(finish):  # nothing whole was there to pass
                return self.reject(row, cuts[0].replace(": ", ": responses ", 1))
            return self.reject(row, "no_passing_response")
        if passing:
            meta["chosen"] = passing[0]
            messages = records.with_response(row, responses[passing[0]], finish[passing[0]])
        else:  # preference data only: an unverified assistant turn must not reach sft/
            messages = records.prompt_messages(row)
        out = records.derive(row, self.ctx.name, messages, meta)
        out["pairs"] = pairs
        return out


def evaluate_code(text: str) -> str | None:
    """The model's verifier as code defining `evaluate`; a lone function of another name is aliased."""
    code = cu.pick_function(text, "evaluate")
    if code is None or re.search(r"^def\s+evaluate\s*\(", code, re.M):
        return code
    names = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", code, re.M)
    return f"{code}\n\nevaluate = {names[0]}\n" if names else None


def parse_cases(text: str, cut: bool = False) -> list[tuple[str, bool]]:
    """Labelled examples: blocks starting "GOOD:"/"BAD:" (also PASS/FAIL, bullets and bold allowed; a
    block runs to the next label or a blank line, so trailing prose is not an example), or JSON
    [{"response": str, "label"|"pass"|"expected": bool}]. Duplicate texts keep their first label.
    `cut`: the reply stopped at max_tokens, so its last labelled block may be cut: it is dropped (a
    JSON value that decodes is whole)."""
    found = []
    marks = list(LABEL.finditer(text))
    for m, nxt in zip(marks[:-1] if cut else marks, marks[1:] + [None], strict=False):  # none -> no blocks
        body = text[m.start(2) : nxt.start() if nxt else len(text)]
        body = re.split(r"\n\s*\n", body, maxsplit=1)[0].strip().strip('"').strip()
        if body:
            found.append((body, m.group(1).lower() in TRUE_LABELS))
    for item in cu.json_values(text):
        for case in item if isinstance(item, list) else [item]:
            if isinstance(case, dict) and isinstance(case.get("response"), str):
                label = next((case[k] for k in ("label", "pass", "expected", "follows") if k in case), None)
                if isinstance(label, bool):
                    found.append((case["response"], label))
    return cu.first_of_each(found, key=lambda case: case[0])


def build_pairs(
    responses: list[str], rates: list, stage: str, max_pairs: int, reasons: list | None = None
) -> list[dict]:
    """(pass rate >= 0.5, pass rate == 0) pairs, best chosen first; a None rate takes no part."""
    good = sorted(
        (j for j, r in enumerate(rates) if r is not None and r >= 0.5), key=lambda j: (-rates[j], j)
    )
    bad = [j for j, r in enumerate(rates) if r == 0.0]
    return cu.preference_pairs(responses, rates, good, bad, stage, max_pairs, reasons)
