"""judge: LLM-as-judge on rubrics (rubrics/judge/rubrics.yaml, prompts pointwise/pairwise.{en,zh}.jinja).

pointwise (default): one prompt per (row, criterion) -> "Reason: ... Score: N" (1-10).
    row out: meta.judge = {scores: {criterion: int | None}, reasons, raw, score: mean of the parsed}
    params.min_score turns it into a gate: a row whose mean score is below it is rejected.
pairwise: rows carrying several candidate responses (row[candidates_field] or the seed line's field, a
    list of strings) are compared two at a time, in both orders (A/B, then B/A: position swap). The
    two verdicts are reconciled: the same winner both times -> that winner; anything else -> tie.
    Decisive comparisons become (winner, loser) entries of the row's `pairs` column.
    row out: meta.judge = {comparisons: [{a, b, criterion, ab, ba, verdict}], wins, ties}, pairs

Unparseable verdicts: on_unparseable="reject" (default) rejects the row with the raw judge text;
"keep" keeps it with that score None (it then counts for neither the mean nor the gate).
"""

from __future__ import annotations

import re
from functools import cache
from itertools import combinations
from typing import Literal

from pydantic import BaseModel, Field

from alignfactory import records
from alignfactory.stages.assemble.filter import language
from alignfactory.stages.base import RUBRICS, LLMStage, render
from alignfactory.stages.verify.code_utils import json_values, sampling_with

NUM = r"(\d+(?:\.\d+)?)"
# "Score: 7", "**Rating**: 8/10", "评分：8分", "得分: 9"; not "Score: 1 to 10" (an echoed scale)
LABELED_SCORE = re.compile(
    r"(?:score|rating|评分|分数|得分|打分)[\s*_\]]*[:：=]?[\s*]*" + NUM + r"(?!\s*(?:to|-|–|到|至)\s*\d)",
    re.IGNORECASE,
)
BARE_SCORE = re.compile(r"\[\[" + NUM + r"\]\]|" + NUM + r"\s*(?:/\s*10\b|out of 10|分(?!数))", re.IGNORECASE)
REASON = re.compile(r"(?:reason(?:ing)?|explanation|理由|原因)[\s*]*[:：]\s*(.+)", re.IGNORECASE)
LABELED_VERDICT = re.compile(
    r"(?:verdict|winner|better|final answer|结论|胜者|更好的回答)[\s*]*[:：]?[\s*\[]*"
    r"(?:response|answer|回答|答案)?\s*(A|B|tie|draw|平局|平手|相同|一样好)(?![A-Za-z])",
    re.IGNORECASE,
)
BRACKET_VERDICT = re.compile(r"\[\[(A|B|C|tie)\]\]", re.IGNORECASE)
PHRASE_VERDICT = re.compile(
    r"(?:response|回答)\s*(A|B)\s*(?:is better|is more|更好|更优|胜出)", re.IGNORECASE
)
TIES = {"tie", "draw", "c", "平局", "平手", "相同", "一样好"}


def parse_score(text: str, low: int = 1, high: int = 10) -> float | None:
    """The judge's score: a JSON {"score": x}, else the last labeled score, else "[[x]]" / "x/10" /
    "x分". None if there is none or it lies outside [low, high]."""
    found = None
    for value in json_values(text):
        if isinstance(value, dict):
            for k in ("score", "rating", "评分"):
                if isinstance(value.get(k), (int, float)) and not isinstance(value.get(k), bool):
                    found = float(value[k])
    if found is None:
        labeled = LABELED_SCORE.findall(text)
        if labeled:
            found = float(labeled[-1])
        else:
            bare = [a or b for a, b in BARE_SCORE.findall(text)]
            found = float(bare[-1]) if bare else None
    return found if found is not None and low <= found <= high else None


def parse_reason(text: str) -> str:
    m = REASON.search(text)
    if m:
        return m.group(1).strip()
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not LABELED_SCORE.search(ln)]
    return " ".join(lines).strip()


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'tie' from a pairwise judgement; None if it names none. The last labeled verdict
    wins (models restate the options before deciding)."""
    for pattern in (LABELED_VERDICT, BRACKET_VERDICT, PHRASE_VERDICT):
        hits = pattern.findall(text)
        if hits:
            v = hits[-1].strip()
            return "tie" if v.lower() in TIES else v.upper()
    stripped = text.strip().strip("*[]().。").strip()
    if stripped.upper() in ("A", "B"):  # a bare one-letter answer
        return stripped.upper()
    return "tie" if stripped.lower() in TIES else None


def reconcile(ab: str | None, ba: str | None) -> str | None:
    """Verdict on (a, b) from the a-first verdict and the b-first one (in which 'A' meant b).
    Agreement -> that verdict; disagreement (position bias) -> 'tie'; None if either is missing."""
    if ab is None or ba is None:
        return None
    swapped = {"A": "B", "B": "A", "tie": "tie"}[ba]
    return ab if ab == swapped else "tie"


@cache
def _rubrics(path: str) -> dict:
    import yaml

    file = RUBRICS / path
    try:
        data = yaml.safe_load(file.read_text("utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{file}: YAML error: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a mapping criterion -> {{en, zh}}")
    for name, text in data.items():
        if not isinstance(text, dict) or not all(text.get(lang) for lang in ("en", "zh")):
            raise ValueError(f"{file}: criterion {name!r} needs both en and zh text")
    return data


class Judge(LLMStage):
    class Params(BaseModel, extra="forbid"):
        mode: Literal["pointwise", "pairwise"] = "pointwise"
        criteria: list[str] = Field(["helpfulness"], min_length=1)  # keys of rubrics_file
        language: Literal["auto", "en", "zh"] = "auto"  # auto: the instruction's language
        min_score: float | None = None  # pointwise gate on the mean score (1-10)
        on_unparseable: Literal["reject", "keep"] = "reject"
        candidates_field: str = "candidates"  # pairwise: the row's (or seed line's) list of responses
        max_tokens: int = Field(96, ge=1)
        temperature: float = Field(0.0, ge=0)  # 0 = greedy
        rubrics_file: str = "judge/rubrics.yaml"
        pointwise_template: str = "judge/pointwise.{lang}.jinja"
        pairwise_template: str = "judge/pairwise.{lang}.jinja"

    requires = {"messages": "pointwise: a conversation ending in an assistant turn"}
    adds = ("meta.judge", "pairs")

    def __init__(self, params, ctx, engine=None):
        rubrics = _rubrics(params.rubrics_file)
        unknown = [c for c in params.criteria if c not in rubrics]
        if unknown:
            raise ValueError(
                f"judge: criteria {unknown} not in rubrics/{params.rubrics_file} ({sorted(rubrics)})"
            )
        super().__init__(params, ctx, engine)
        self.rubrics = rubrics

    @classmethod
    def template_files(cls, params):
        t = params.pointwise_template if params.mode == "pointwise" else params.pairwise_template
        return [RUBRICS / params.rubrics_file] + [RUBRICS / t.format(lang=lang) for lang in ("en", "zh")]

    def lang(self, row: dict) -> str:
        return self.params.language if self.params.language != "auto" else language(records.instruction(row))

    def ask(self, jobs: list[tuple[dict, str, str]]) -> list[str]:
        """One engine call for (row, what, prompt) jobs; seeds keyed by (row id, what)."""
        if not jobs:
            return []
        sampling = sampling_with(
            self.ctx.sampling, n=1, max_tokens=self.params.max_tokens, temperature=self.params.temperature
        )
        keyed = [{"id": f"{row['id']}:{what}"} for row, what, _ in jobs]  # seeds() reads only the id
        outs = self.complete([[{"role": "user", "content": p}] for _, _, p in jobs], keyed, sampling)
        return [o.texts[0] for o in outs]

    def __call__(self, rows: list[dict]) -> list[dict]:
        return self.pointwise(rows) if self.params.mode == "pointwise" else self.pairwise(rows)

    # ---- pointwise ------------------------------------------------------------------------------

    def pointwise(self, rows: list[dict]) -> list[dict]:
        p = self.params
        todo = [r for r in rows if records.response(r) is not None]
        for r in rows:
            if records.response(r) is None:
                self.reject(r, "no_response: pointwise judging needs an assistant turn")
        jobs = []
        for r in todo:
            lang = self.lang(r)
            for c in p.criteria:
                prompt = render(
                    p.pointwise_template.format(lang=lang),
                    criterion=c,
                    rubric=self.rubrics[c][lang],
                    instruction=records.instruction(r),
                    response=records.response(r),
                )
                jobs.append((r, c, prompt))
        texts = iter(self.ask(jobs))
        for r in todo:
            raw = {c: next(texts) for c in p.criteria}
            scores = {c: parse_score(t) for c, t in raw.items()}
            parsed = [s for s in scores.values() if s is not None]
            self.meta(r).update(
                scores=scores,
                reasons={c: parse_reason(t) for c, t in raw.items()},
                raw=raw,
                score=round(sum(parsed) / len(parsed), 3) if parsed else None,
            )
            bad = [c for c, s in scores.items() if s is None]
            if bad and p.on_unparseable == "reject":
                self.reject(
                    r, f"unparseable_verdict: {', '.join(bad)}", raw="\n---\n".join(raw[c] for c in bad)
                )
            elif p.min_score is not None and parsed and self.meta(r)["score"] < p.min_score:
                self.reject(r, f"below_min_score: {self.meta(r)['score']} < {p.min_score}")
        return rows

    # ---- pairwise -------------------------------------------------------------------------------

    def candidates(self, row: dict) -> list[str] | None:
        field = self.params.candidates_field
        value = row.get(field, (row.get("seed") or {}).get(field))
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None

    def pairwise(self, rows: list[dict]) -> list[dict]:
        p = self.params
        plans = []  # (row, candidates, [(i, j, criterion)])
        for r in rows:
            cands = self.candidates(r)
            if cands is None or len(cands) < 2:
                self.reject(
                    r,
                    f"no_candidates: pairwise judging needs a list of >= 2 strings in {p.candidates_field!r}",
                )
                continue
            plans.append(
                (r, cands, [(i, j, c) for i, j in combinations(range(len(cands)), 2) for c in p.criteria])
            )
        jobs = []
        for r, cands, comps in plans:
            lang = self.lang(r)
            for i, j, c in comps:
                for first, second, order in ((i, j, "ab"), (j, i, "ba")):  # position swap
                    prompt = render(
                        p.pairwise_template.format(lang=lang),
                        criterion=c,
                        rubric=self.rubrics[c][lang],
                        instruction=records.instruction(r),
                        response_a=cands[first],
                        response_b=cands[second],
                    )
                    jobs.append((r, f"{c}:{i}:{j}:{order}", prompt))
        texts = iter(self.ask(jobs))
        for r, cands, comps in plans:
            self.finish_pairwise(r, cands, [(i, j, c, next(texts), next(texts)) for i, j, c in comps])
        return rows

    def finish_pairwise(self, row: dict, cands: list[str], judged: list[tuple]) -> None:
        comparisons, unparseable = [], []
        wins = [0.0] * len(cands)
        votes: dict[tuple[int, int], int] = {}  # (i, j) -> criteria won by i minus criteria won by j
        for i, j, c, raw_ab, raw_ba in judged:
            ab, ba = parse_verdict(raw_ab), parse_verdict(raw_ba)
            verdict = reconcile(ab, ba)
            comparisons.append(
                {
                    "a": i,
                    "b": j,
                    "criterion": c,
                    "ab": ab,
                    "ba": ba,
                    "verdict": verdict,
                    "raw": [raw_ab, raw_ba],
                }
            )
            if verdict is None:
                unparseable += [t for t, v in ((raw_ab, ab), (raw_ba, ba)) if v is None]
                continue
            step = {"A": 1, "B": -1, "tie": 0}[verdict]
            votes[(i, j)] = votes.get((i, j), 0) + step
            wins[i] += (1 + step) / 2
            wins[j] += (1 - step) / 2
        ties = sum(1 for v in votes.values() if v == 0)
        self.meta(row).update(comparisons=comparisons, wins=wins, ties=ties)
        if unparseable and self.params.on_unparseable == "reject":
            self.reject(
                row,
                f"unparseable_verdict: {len(unparseable)} of {2 * len(judged)}",
                raw="\n---\n".join(unparseable),
            )
            return
        if row.get("pairs") is None:
            row["pairs"] = []
        pairs = row["pairs"]
        for (i, j), v in votes.items():
            if v != 0:
                win, lose = (i, j) if v > 0 else (j, i)
                if cands[win] != cands[lose]:
                    pairs.append(
                        {
                            "chosen": cands[win],
                            "rejected": cands[lose],
                            "stage": self.ctx.name,
                            "policy": "pairwise",
                            "chosen_score": wins[win],
                            "rejected_score": wins[lose],
                        }
                    )
