"""Scorers for online DPO and evaluation: each maps (prompt row, completions) -> one float per
completion, or None where the completion cannot be scored for that row (no reference, sandbox
infrastructure error). Higher is better.

    reward_model  a sequence-classification checkpoint (`trl reward` output): its logit
    math          1.0 / 0.0: alignfactory.verify.math extract_answer + equivalent vs row["answer"]
                  (imported lazily; without that module the scorer is unavailable and says so)
    code          fraction of row["tests"] passed by row["entry_point"] in the sandbox (sandbox/)
    autoif        1.0 / 0.0: row["verifier"] (`def evaluate(response) -> bool`) run in the sandbox
    judge         a model's 1-10 rating with rubrics/judge/pointwise.en.jinja, scaled to 0-1
    auto          per row: math if it has "answer", code if "entry_point"+"tests", autoif if
                  "verifier", else the reward model (else the judge)

A prompt row: {"prompt": [messages], "answer"?, "entry_point"?, "tests"?, "verifier"?}.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)
KINDS = ("auto", "reward_model", "math", "code", "autoif", "judge")
JUDGE_TEMPLATE = Path(__file__).resolve().parents[2] / "rubrics/judge/pointwise.en.jinja"


def math_available() -> bool:
    return importlib.util.find_spec("alignfactory.verify.math") is not None


def kind_of(row: dict, have_rm: bool, have_judge: bool) -> str | None:
    """Which verifier `auto` uses for this row (None: nothing can score it)."""
    if row.get("answer") is not None and math_available():
        return "math"
    if row.get("entry_point") and row.get("tests"):
        return "code"
    if row.get("verifier"):
        return "autoif"
    return "reward_model" if have_rm else ("judge" if have_judge else None)


class Scorers:
    """All scorers one run needs, built lazily (a reward model or a sandbox only when a row asks)."""

    def __init__(
        self,
        kind: str = "auto",
        reward_model: str | None = None,
        judge_model: str | None = None,
        sandbox_limits: dict | None = None,
        allow_unsafe: bool = False,
        device: str = "cpu",
        max_length: int = 1024,
    ):
        if kind not in KINDS:
            raise ValueError(f"scorer: unknown kind {kind!r}; one of {', '.join(KINDS)}")
        if kind == "reward_model" and not reward_model:
            raise ValueError("scorer: kind reward_model needs reward_model: <checkpoint dir>")
        if kind == "math" and not math_available():
            raise ValueError("scorer: kind math needs alignfactory.verify.math, which is not installed")
        self.kind, self.rm_path, self.judge_model = kind, reward_model, judge_model
        self.limits, self.allow_unsafe = sandbox_limits or {"wall_s": 4.0, "memory_mb": 512}, allow_unsafe
        self.device, self.max_length = device, max_length
        self._rm = self._sandbox = self._judge_engine = None

    def score(self, rows: list[dict], completions: list[list[str]]) -> tuple[list[list], list[str | None]]:
        """Scores per completion (same shape as completions) and the scorer used per row."""
        kinds = [
            self.kind if self.kind != "auto" else kind_of(r, bool(self.rm_path), bool(self.judge_model))
            for r in rows
        ]
        out: list[list] = [[None] * len(c) for c in completions]
        for kind in sorted({k for k in kinds if k}):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            scores = getattr(self, f"_{kind}")([rows[i] for i in idx], [completions[i] for i in idx])
            for i, s in zip(idx, scores, strict=True):
                out[i] = s
        return out, kinds

    # ---- reward model ---------------------------------------------------------------------------

    def _reward_model(self, rows, completions):
        import torch

        if self._rm is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.rm_path)
            model = AutoModelForSequenceClassification.from_pretrained(self.rm_path, num_labels=1)
            model.config.pad_token_id = tok.pad_token_id
            self._rm = (tok, model.to(self.device).eval())
        tok, model = self._rm
        texts = [
            tok.apply_chat_template(r["prompt"] + [{"role": "assistant", "content": c}], tokenize=False)
            for r, cs in zip(rows, completions, strict=True)
            for c in cs
        ]
        flat = []
        for start in range(0, len(texts), 8):  # 8 sequences per forward: bounded memory
            enc = tok(
                texts[start : start + 8],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(self.device)
            with torch.no_grad():
                flat += model(**enc).logits[:, 0].float().tolist()
        it = iter(flat)
        return [[next(it) for _ in cs] for cs in completions]

    # ---- math -----------------------------------------------------------------------------------

    def _math(self, rows, completions):
        from alignfactory.verify import math as vm

        out = []
        for r, cs in zip(rows, completions, strict=True):
            gold = str(r["answer"])
            out.append([1.0 if vm.equivalent(gold, vm.extract_answer(c)) else 0.0 for c in cs])
        return out

    # ---- sandbox: code tests and AutoIF functions -------------------------------------------------

    def sandbox(self):
        if self._sandbox is None:
            from sandbox import Limits, Sandbox

            self._sandbox = Sandbox(Limits(**self.limits), workers=2, allow_unsafe=self.allow_unsafe)
        return self._sandbox

    def _run_jobs(self, jobs_per_row):
        from sandbox import Status

        flat = [j for jobs in jobs_per_row for j in jobs]
        done = self.sandbox().run(flat) if flat else []
        for v in done:
            if v.status is Status.SANDBOX_ERROR:
                log.warning("sandbox error (completion left unscored): %s", v.detail)
        verdicts = iter(done)
        return [[next(verdicts) for _ in jobs] for jobs in jobs_per_row]

    def _code(self, rows, completions):
        from alignfactory.stages.verify.code_utils import pick_function
        from sandbox import Case, Job, Status

        jobs, pos = [], []
        for r, cs in zip(rows, completions, strict=True):
            tests = [Case(args=list(t["args"]), expected=t["expected"]) for t in r["tests"]]
            code = [pick_function(c, r["entry_point"]) for c in cs]
            pos.append(code)
            jobs.append([Job(code=src, entry_point=r["entry_point"], tests=tests) for src in code if src])
        out = []
        for code, verdicts in zip(pos, self._run_jobs(jobs), strict=True):
            it, scores = iter(verdicts), []
            for src in code:
                if src is None:  # no function in the completion: it fails every test
                    scores.append(0.0)
                    continue
                v = next(it)
                if v.status is Status.SANDBOX_ERROR:  # infrastructure, not the completion's fault
                    scores.append(None)
                else:
                    scores.append(sum(v.pass_vector) / max(1, len(v.pass_vector)))
            out.append(scores)
        return out

    def _autoif(self, rows, completions):
        from sandbox import Case, Job, Status

        jobs = [
            [
                Job(code=r["verifier"], entry_point="evaluate", tests=[Case(args=[c], expected=True)])
                for c in cs
            ]
            for r, cs in zip(rows, completions, strict=True)
        ]
        return [
            [None if v.status is Status.SANDBOX_ERROR else float(v.passed) for v in vs]
            for vs in self._run_jobs(jobs)
        ]

    # ---- judge ----------------------------------------------------------------------------------

    def _judge(self, rows, completions):
        from jinja2 import Template

        from alignfactory.llm import make_engine
        from alignfactory.llm.base import Constraint, Sampling
        from alignfactory.llm.config import ModelConfig
        from alignfactory.stages.synthesize.judge import SCORE_SCHEMA, read_score

        if self._judge_engine is None:
            self._judge_engine = make_engine(
                ModelConfig(path=self.judge_model if self.judge_model != "embedded" else None)
            )
        tpl = Template(JUDGE_TEMPLATE.read_text(encoding="utf-8"))
        convs = [
            [
                {
                    "role": "user",
                    "content": tpl.render(
                        criterion="helpfulness",
                        rubric="Does the response solve the request correctly and completely?",
                        instruction=r["prompt"][-1]["content"],
                        response=c,
                    ),
                }
            ]
            for r, cs in zip(rows, completions, strict=True)
            for c in cs
        ]
        # the judge stage's shape ({"reason", "score": 1-10}), constrained where the engine can
        sampling = Sampling(max_tokens=96, temperature=0.0, constraint=Constraint.json(SCORE_SCHEMA))
        outs = self._judge_engine.chat(convs, sampling, list(range(len(convs))))
        it = iter(outs)
        out = []
        for cs in completions:
            scores = []
            for _ in cs:
                o = next(it)
                # the judge stage's reader: structured JSON, or labeled free text where the engine
                # could not constrain; a cut reply or no readable score: unscored
                v = read_score(o)[0] if o.complete(0) else None
                scores.append(v / 10 if v is not None else None)
            out.append(scores)
        return out

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
