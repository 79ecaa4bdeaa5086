"""judge: LLM-as-judge on rubrics (rubrics/judge/rubrics.yaml, prompts pointwise/pairwise.{en,zh}.jinja).

Structured verdicts. The judge asks its engine for a shape (output_constraints): pointwise a JSON
object {"reason": str (<= REASON_MAX_CHARS characters), "score": integer 1-10}; pairwise one of
"A" | "B" | "tie". When the engine enforced it (Completion.constrained) the reply is read as that
shape and nothing else; when it could not, the reply is parsed as free text (parse_score,
parse_verdict), and the row says so: parse = "structured" | "free_text: <why unconstrained>" |
"truncated: finish_reason '<r>'" | "structured_invalid". A verdict that did not end by itself
(finish reason not "stop", after the on_truncated retry) is not a verdict: it is unreadable.

Free text: a score is read only when it is labeled as one ("Score: 7", "**Rating**: 8/10", "评分：8",
"[[6]]", "7/10", "3 out of 10", "7分", a JSON {"score": 7}) or when a lone integer is the whole reply
("8"). A number inside a sentence ("The answer to this question is: 10") is not a score: it may be
the model answering the request instead of rating it. "Verdict: a tie" is a tie, not "A".

pointwise (default): one prompt per (row, criterion).
    row out: meta.judge = {scores: {criterion: int | None}, reasons, raw, parse: {criterion: how},
             score: the mean over criteria, None unless every criterion was read}
    min_score makes it a gate: a mean below it is rejected `below_min_score`, and a row whose score
    cannot be read (any criterion unreadable) is rejected `unscored: <criteria>` with the raw judge
    text, whatever on_unparseable says. Without a gate, on_unparseable "reject" (default) rejects such
    rows the same way; "keep" keeps them with score None (a later `pairs` leaves them out of ranking
    and counts them). So "keep" keeps rows only when there is no min_score gate.
pairwise: a row carrying candidate responses (row[candidates_field] with row["candidate_finish_reasons"],
    as `generate` with `candidates: true` writes them; or the seed line's field, input text) has
    every pair of its complete candidates compared, per criterion, in both orders (A/B, then B/A:
    position swap). The same winner both times -> that winner; a verdict that flips under the swap
    -> tie (counted: ties_under_swap); an unreadable verdict in either order drops that comparison
    (counted), not the row. Candidates whose finish reason is not "stop" ("input" for seed text) are
    left out of judging (counted). A candidate's win_rate = (wins + ties / 2) / readable comparisons it
    was in, None when it was in none (left out of ranking, counted); `pairs` ranks by it. Decisive
    comparisons become (winner, loser) entries of the row's `pairs`, with their finish reasons.
    row out: meta.judge = {comparisons: [{a, b, criterion, ab, ba, verdict, parse, raw}],
             wins, win_rate, ties, incomplete_candidates, unscored_candidates,
             consistency: {judged, agree, ties_under_swap, unreadable}}, pairs
    consistency (the run's judge consistency sums it over rows): judged = comparisons with both
    orders readable; agree = judged ones whose two verdicts agree under the swap; ties_under_swap =
    judged - agree; unreadable = comparisons dropped. A row with < 2 complete candidates is rejected
    `no_candidates`; a row none of whose comparisons could be read is rejected `unscored` (raw kept),
    or kept with every win_rate None when on_unparseable is "keep".
"""

from __future__ import annotations

import json
import re
from functools import cache
from itertools import combinations
from typing import Literal

from pydantic import Field

from alignfactory import records
from alignfactory.llm.base import Constraint
from alignfactory.stages.assemble.filter import language
from alignfactory.stages.base import RUBRICS, LLMParams, LLMStage, render
from alignfactory.stages.verify.code_utils import json_values, sampling_with

REASON_MAX_CHARS = 160  # ~40 tokens: the pointwise JSON verdict fits in ~56 tokens
SCORE_SCHEMA = {
    "type": "object",
    # canonical JSON sorts keys: "reason" comes before "score", so the model reasons before it scores
    "properties": {
        "reason": {"type": "string", "maxLength": REASON_MAX_CHARS},
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["reason", "score"],
    "additionalProperties": False,
}
VERDICTS = ("A", "B", "tie")

NUM = r"(\d+(?:\.\d+)?)"
# "Score: 7", "**Rating**: 8/10", "评分：8分", "得分: 9"; not "Score: 1 to 10" (an echoed scale)
LABELED_SCORE = re.compile(
    r"(?:score|rating|评分|分数|得分|打分)[\s*_\]\"]*[:：=]?[\s*]*" + NUM + r"(?!\s*(?:to|-|–|到|至)\s*\d)",
    re.IGNORECASE,
)
BARE_SCORE = re.compile(r"\[\[" + NUM + r"\]\]|" + NUM + r"\s*(?:/\s*10\b|out of 10|分(?!数))", re.IGNORECASE)
LONE_SCORE = re.compile(r"[\s*\"'`.。]*(\d{1,2})[\s*\"'`.。]*")  # the whole reply is one integer
REASON = re.compile(r"(?:reason(?:ing)?|explanation|理由|原因)[\s*\"]*[:：]\s*(.+)", re.IGNORECASE)
_TIE = r"tie|draw|平局|平手|相同|一样好"
LABELED_VERDICT = re.compile(
    r"(?:verdict|winner|better|final answer|结论|胜者|更好的回答)[\s*]*[:：]?[\s*\[]*"
    # "a tie" / "it's a tie" before the letters, so the article is not read as "A"
    r"(?:(?:it(?:'s|\s+is)\s+)?(?:a|an)\s+("
    + _TIE
    + r")|(?:response|answer|回答|答案)?\s*(A|B|"
    + _TIE
    + r"))"
    r"(?![A-Za-z])",
    re.IGNORECASE,
)
BRACKET_VERDICT = re.compile(r"\[\[(A|B|C|tie)\]\]", re.IGNORECASE)
PHRASE_VERDICT = re.compile(
    r"(?:response|回答)\s*(A|B)\s*(?:is better|is more|更好|更优|胜出)", re.IGNORECASE
)
TIES = {"tie", "draw", "c", "平局", "平手", "相同", "一样好"}


def parse_score(text: str, low: int = 1, high: int = 10) -> float | None:
    """Free-text score: a JSON {"score": x}, else the last labeled score, else "[[x]]" / "x/10" /
    "x out of 10" / "x分", else a lone integer that is the whole reply. None if there is none or it
    lies outside [low, high]; an unlabeled number inside a sentence is not a score."""
    found = None
    for value in json_values(text):
        if isinstance(value, dict):
            for k in ("score", "rating", "评分"):
                if isinstance(value.get(k), (int, float)) and not isinstance(value.get(k), bool):
                    found = float(value[k])
    if found is None:
        labeled = LABELED_SCORE.findall(text)
        bare = [a or b for a, b in BARE_SCORE.findall(text)]
        lone = LONE_SCORE.fullmatch(text)
        if labeled:
            found = float(labeled[-1])
        elif bare:
            found = float(bare[-1])
        elif lone:
            found = float(lone.group(1))
    return found if found is not None and low <= found <= high else None


def parse_reason(text: str) -> str:
    m = REASON.search(text)
    if m:
        return m.group(1).strip()
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not LABELED_SCORE.search(ln)]
    return " ".join(lines).strip()


def parse_verdict(text: str) -> str | None:
    """Free-text 'A', 'B' or 'tie' from a pairwise judgement; None if it names none. The last labeled
    verdict wins (models restate the options before deciding)."""
    for pattern in (LABELED_VERDICT, BRACKET_VERDICT, PHRASE_VERDICT):
        hits = pattern.findall(text)
        if hits:
            last = hits[-1]
            v = "".join(last).strip() if isinstance(last, tuple) else last.strip()
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


def how_read(out) -> str:
    """How a judge Completion's single sample is read: 'truncated: ...', 'structured' or 'free_text: why'."""
    if not out.complete(0):
        return f"truncated: finish_reason {out.finish_reason(0)!r}"
    if out.constrained:
        return "structured"
    return f"free_text: {out.unconstrained_why or 'engine did not constrain'}"


def read_score(out) -> tuple[float | None, str, str]:
    """(score or None, reason, how) from a pointwise Completion."""
    text, how = out.texts[0], how_read(out)
    if how.startswith("truncated"):
        return None, "", how
    if how != "structured":
        return parse_score(text), parse_reason(text), how
    try:
        value = json.loads(text)
    except ValueError:
        return None, "", "structured_invalid"
    score = value.get("score") if isinstance(value, dict) else None
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 10:
        return None, "", "structured_invalid"
    reason = value.get("reason")
    return float(score), reason.strip() if isinstance(reason, str) else "", how


def read_verdict(out) -> tuple[str | None, str]:
    """('A' | 'B' | 'tie' | None, how) from a pairwise Completion."""
    text, how = out.texts[0], how_read(out)
    if how.startswith("truncated"):
        return None, how
    if how != "structured":
        return parse_verdict(text), how
    v = text.strip()
    v = "tie" if v.lower() == "tie" else v
    return (v, how) if v in VERDICTS else (None, "structured_invalid")


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
    class Params(LLMParams):
        mode: Literal["pointwise", "pairwise"] = "pointwise"
        criteria: list[str] = Field(["helpfulness"], min_length=1)  # keys of rubrics_file
        language: Literal["auto", "en", "zh"] = "auto"  # auto: the instruction's language
        min_score: float | None = None  # pointwise gate on the mean score (1-10); unscored never passes
        on_unparseable: Literal["reject", "keep"] = "reject"  # keep: only without a min_score gate
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

    @classmethod
    def output_constraints(cls, params) -> list[Constraint]:
        return [cls.constraint(params)]

    @staticmethod
    def constraint(params) -> Constraint:
        return Constraint.json(SCORE_SCHEMA) if params.mode == "pointwise" else Constraint.choice(VERDICTS)

    def lang(self, row: dict) -> str:
        return self.params.language if self.params.language != "auto" else language(records.instruction(row))

    def ask(self, jobs: list[tuple[dict, str, str]]) -> list:
        """One engine call for (row, what, prompt) jobs -> Completions; seeds keyed by (row id, what)."""
        if not jobs:
            return []
        sampling = sampling_with(
            self.ctx.sampling,
            n=1,
            max_tokens=self.params.max_tokens,
            temperature=self.params.temperature,
            constraint=self.constraint(self.params),
        )
        keyed = [{"id": f"{row['id']}:{what}"} for row, what, _ in jobs]  # seeds() reads only the id
        return self.complete([[{"role": "user", "content": p}] for _, _, p in jobs], keyed, sampling)

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
        outs = iter(self.ask(jobs))
        for r in todo:
            got = {c: next(outs) for c in p.criteria}
            read = {c: read_score(o) for c, o in got.items()}
            scores = {c: s for c, (s, _, _) in read.items()}
            bad = [c for c, s in scores.items() if s is None]
            self.meta(r).update(
                scores=scores,
                reasons={c: why for c, (_, why, _) in read.items()},
                raw={c: o.texts[0] for c, o in got.items()},
                parse={c: how for c, (_, _, how) in read.items()},
                # a mean over some criteria is not comparable with one over all: no score unless all read
                score=None if bad else round(sum(scores.values()) / len(scores), 3),
            )
            if bad and (p.min_score is not None or p.on_unparseable == "reject"):
                # a gate that cannot read its input rejects; never passes on silence
                self.reject(
                    r,
                    f"unscored: {', '.join(bad)}",
                    raw="\n---\n".join(got[c].texts[0] for c in bad),
                )
            elif p.min_score is not None and self.meta(r)["score"] < p.min_score:
                self.reject(r, f"below_min_score: {self.meta(r)['score']} < {p.min_score}")
        return rows

    # ---- pairwise -------------------------------------------------------------------------------

    def candidates(self, row: dict) -> tuple[list[str], list[str | None]] | None:
        """(texts, finish reasons): the row's own list with row["candidate_finish_reasons"] (a missing
        reason is incomplete), or the seed line's list (input text: "input")."""
        field = self.params.candidates_field
        own = field in row
        value = row.get(field) if own else (row.get("seed") or {}).get(field)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return None
        if not own:
            return value, [records.FROM_INPUT] * len(value)
        reasons = list(row.get("candidate_finish_reasons") or [])
        return value, (reasons + [None] * len(value))[: len(value)]

    def pairwise(self, rows: list[dict]) -> list[dict]:
        p = self.params
        plans = []  # (row, candidates, finish reasons, [(i, j, criterion)])
        for r in rows:
            got = self.candidates(r)
            cands, reasons = got if got is not None else ([], [])
            ok = [i for i, why in enumerate(reasons) if why in ("stop", records.FROM_INPUT)]
            if len(ok) < 2:
                self.meta(r).update(incomplete_candidates=len(cands) - len(ok))
                self.reject(
                    r,
                    f"no_candidates: pairwise judging needs >= 2 complete candidates in "
                    f"{p.candidates_field!r} ({len(ok)} of {len(cands)} complete)",
                )
                continue
            comps = [(i, j, c) for i, j in combinations(ok, 2) for c in p.criteria]
            plans.append((r, cands, reasons, comps))
        jobs = []
        for r, cands, _, comps in plans:
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
        outs = iter(self.ask(jobs))
        for r, cands, reasons, comps in plans:
            self.finish_pairwise(r, cands, reasons, [(i, j, c, next(outs), next(outs)) for i, j, c in comps])
        return rows

    def finish_pairwise(self, row: dict, cands: list[str], reasons: list, judged: list[tuple]) -> None:
        n = len(cands)
        comparisons, unreadable_raw = [], []
        points, seen = [0.0] * n, [0] * n  # per candidate: wins + ties/2, readable comparisons it was in
        votes: dict[tuple[int, int], int] = {}  # (i, j) -> criteria won by i minus criteria won by j
        consistency = {"judged": 0, "agree": 0, "ties_under_swap": 0, "unreadable": 0}
        for i, j, c, out_ab, out_ba in judged:
            (ab, how_ab), (ba, how_ba) = read_verdict(out_ab), read_verdict(out_ba)
            verdict = reconcile(ab, ba)
            comparisons.append(
                {
                    "a": i,
                    "b": j,
                    "criterion": c,
                    "ab": ab,
                    "ba": ba,
                    "verdict": verdict,
                    "parse": [how_ab, how_ba],
                    "raw": [out_ab.texts[0], out_ba.texts[0]],
                }
            )
            if verdict is None:  # dropped: this comparison only
                consistency["unreadable"] += 1
                unreadable_raw += [o.texts[0] for o, v in ((out_ab, ab), (out_ba, ba)) if v is None]
                continue
            consistency["judged"] += 1
            agree = ab == {"A": "B", "B": "A", "tie": "tie"}[ba]
            consistency["agree" if agree else "ties_under_swap"] += 1
            step = {"A": 1, "B": -1, "tie": 0}[verdict]
            votes[(i, j)] = votes.get((i, j), 0) + step
            points[i] += (1 + step) / 2
            points[j] += (1 - step) / 2
            seen[i] += 1
            seen[j] += 1
        complete = {i for i, why in enumerate(reasons) if why in ("stop", records.FROM_INPUT)}
        wins = [points[k] if seen[k] else None for k in range(n)]
        win_rate = [round(points[k] / seen[k], 3) if seen[k] else None for k in range(n)]
        self.meta(row).update(
            comparisons=comparisons,
            wins=wins,
            win_rate=win_rate,
            ties=sum(1 for v in votes.values() if v == 0),
            incomplete_candidates=n - len(complete),
            unscored_candidates=sum(1 for k in complete if win_rate[k] is None),
            consistency=consistency,
        )
        if not consistency["judged"] and self.params.on_unparseable == "reject":
            self.reject(
                row,
                f"unscored: no readable comparison ({consistency['unreadable']} unreadable)",
                raw="\n---\n".join(unreadable_raw),
            )
            return
        if row.get("pairs") is None:
            row["pairs"] = []
        for (i, j), v in votes.items():
            if v != 0:
                win, lose = (i, j) if v > 0 else (j, i)
                if cands[win] != cands[lose]:
                    row["pairs"].append(
                        {
                            "chosen": cands[win],
                            "rejected": cands[lose],
                            "stage": self.ctx.name,
                            "policy": "pairwise",
                            "chosen_score": wins[win],
                            "rejected_score": wins[lose],
                            "chosen_finish_reason": reasons[win],
                            "rejected_finish_reason": reasons[lose],
                        }
                    )
