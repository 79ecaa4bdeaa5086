"""pairs (corpus stage): preference pairs from sibling responses to one prompt.

Siblings are the responses to one prompt, in either of two shapes:
  - rows that share a prompt (the conversation before the final assistant turn): the n samples
    `generate` makes of one row (same lineage parent), and whatever later stages derived from them;
  - one row's `candidates` (generate with `candidates: true`: the n texts, with their
    `candidate_finish_reasons`), scored per candidate by candidate_scores_field (a list aligned with
    the candidates, e.g. the pairwise judge's meta.judge.win_rate). Such a row is its own group.
Per group, each policy in params.policies adds at most one pair:

    score      best vs worst by a score (meta.judge.score, meta.reward.score: score_field; for a
               candidates row candidate_scores_field), when best - worst >= min_margin; otherwise the
               group is a tie: skipped and counted.
    verifier   a passing vs a failing sibling (pass_field: the dotted path of a bool a verifier wrote).
    carried    the pairs rows already carry (constitution's revised-vs-original and aligned-vs-deviating,
               reject_sample's correct-vs-incorrect, exec_feedback's pass-vs-fail), deduplicated.

Data truth: a sibling whose response is incomplete (its finish reason, on the message or in
candidate_finish_reasons, is not "stop"/"input"; a missing one is incomplete) never enters a pair
(counted: incomplete); a sibling with no readable score is left out of ranking and pairing (counted:
unscored); a carried pair whose chosen_finish_reason or rejected_finish_reason is not complete is
dropped (counted: incomplete_pairs). Every pair records chosen_finish_reason / rejected_finish_reason.

Length-bias control: every pair records length_ratio = len(chosen) / len(rejected) (characters);
with length_tolerance set, the score and verifier policies choose, among the siblings within
length_tolerance of the best score (or among all passing ones), the one closest in length to the
rejected response instead of the single best.

    row out: the group's representative (the chosen response of its first pair, else its best-scored
             complete row, else its first complete one, else its first) with `pairs` = the group's
             final pairs, and meta.pairs = {group_size, incomplete, ties, unscored, incomplete_pairs,
             by_policy, length_ratios}. The other siblings: keep="best" rejects them
             ("sibling_not_kept: best is <id>"), keep="all" keeps them with `pairs` = [].
    A candidates row becomes a new row (lineage: the candidates row, stage pairs) whose answer is the
             representative candidate (meta.pairs.candidate = its index; the list itself stays on the
             parent row, in the previous stage's output);
             with no scored candidate and no pair it is rejected `unscored`. keep="all" adds the other
             complete candidates as rows of their own with `pairs` = [].
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from alignfactory import records
from alignfactory.stages.base import Stage


def dotted(row: dict, path: str):
    """row["meta"]["judge"]["score"] for "meta.judge.score"; None when any step is missing."""
    node = row
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def group_key(row: dict) -> str:
    return records.message_id(records.prompt_messages(row))


def complete(reason: str | None) -> bool:
    """A response that ended by itself ("stop") or came with the input ("input"); missing = incomplete."""
    return reason in ("stop", records.FROM_INPUT)


def pick(candidates: list[dict], target_len: int | None) -> dict:
    """The first candidate, or (length control) the one whose response length is closest to target_len."""
    if target_len is None:
        return candidates[0]
    return min(candidates, key=lambda r: abs(len(records.response(r)) - target_len))


class Pairs(Stage):
    kind = "corpus"

    class Params(BaseModel, extra="forbid"):
        policies: list[Literal["score", "verifier", "carried"]] = Field(["score", "carried"], min_length=1)
        score_field: str = "meta.judge.score"
        # a candidates row: one score per candidate (None = unscored), e.g. the pairwise judge's win rates
        candidate_scores_field: str = "meta.judge.win_rate"
        min_margin: float = Field(1.0, ge=0)  # best - worst below this is a tie (0 still needs best > worst)
        pass_field: str | None = None  # verifier policy: a bool per row, e.g. meta.<verifier>.passed

        @model_validator(mode="after")
        def _verifier_needs_field(self):
            if "verifier" in self.policies and not self.pass_field:
                raise ValueError(
                    "policy 'verifier' needs pass_field (the dotted path of a bool, e.g. meta.check.passed)"
                )
            return self

        length_tolerance: float | None = Field(None, ge=0)  # score units; None = no length control
        keep: Literal["best", "all"] = "best"

    requires = {
        "messages": "conversations ending in an assistant turn; siblings share the prompt",
        "candidates": "or: one row's candidate responses (generate candidates: true)",
    }
    adds = ("pairs", "meta.pairs")

    def __init__(self, params: BaseModel, ctx):
        super().__init__(params, ctx)
        self.candidate_scores: dict[int, object] = {}  # id(candidate row) -> its score, while grouping one

    def __call__(self, rows: list[dict]) -> list[dict]:
        groups: dict[str, list[dict]] = {}
        out: list[dict] = []
        for r in rows:
            if isinstance(r.get("candidates"), list):
                out += self.candidates_group(r)
            elif records.response(r) is None:
                self.reject(r, "no_response: pairs needs responses (or a candidates list)")
                out.append(r)
            else:
                groups.setdefault(group_key(r), []).append(r)
                out.append(r)
        for siblings in groups.values():
            self.group(siblings)
        return out

    def candidates_group(self, row: dict) -> list[dict]:
        """One candidates row -> its candidates as sibling rows, grouped; returns the rows to output."""
        cands = row["candidates"]
        reasons = list(row.get("candidate_finish_reasons") or []) + [None] * len(cands)
        scores = dotted(row, self.params.candidate_scores_field)
        scores = scores if isinstance(scores, list) else []
        siblings = []
        for k, text in enumerate(cands):
            child = records.derive(row, self.ctx.name, records.with_response(row, text, reasons[k]))
            del child["candidates"]  # an answer now; the list stays on the parent (the judge's shard)
            child.pop("candidate_finish_reasons", None)
            child["meta"][self.ctx.name] = {"candidate": k}
            child["pairs"] = [p for p in row.get("pairs") or [] if p.get("chosen") == text]  # carried, once
            self.candidate_scores[id(child)] = scores[k] if k < len(scores) else None
            siblings.append(child)
        try:
            head, stats = self.group(siblings, candidates=True)
        finally:
            self.candidate_scores = {}
        if head is None:
            self.meta(row).update(stats)
            self.reject(
                row,
                f"unscored: no candidate has a readable score ({stats['unscored']} unscored, "
                f"{stats['incomplete']} incomplete of {len(cands)})",
            )
            return [row]
        others = [r for r in siblings if r is not head and complete(records.response_finish_reason(r))]
        return [head] + (others if self.params.keep == "all" else [])

    def group(self, siblings: list[dict], candidates: bool = False) -> tuple[dict | None, dict]:
        """Pairs for one group -> (its representative, stats). Other sibling rows are rejected or
        cleared per params.keep; candidates are only cleared (the caller decides what to output), and
        a candidates group with no pair and no scored candidate has no representative (None)."""
        whole = [r for r in siblings if complete(records.response_finish_reason(r))]
        stats = {
            "group_size": len(siblings),
            "incomplete": len(siblings) - len(whole),
            "ties": 0,
            "unscored": 0,
            "incomplete_pairs": 0,
            "by_policy": {},
        }
        pairs, heads = [], []  # heads: rows whose response is a chosen one, in policy order
        for policy in self.params.policies:
            policies = {
                "score": self.score_pairs,
                "verifier": self.verifier_pairs,
                "carried": self.carried_pairs,
            }
            found = policies[policy](siblings if policy == "carried" else whole, stats)
            for pair, head in found:
                if pair["chosen"] != pair["rejected"] and all(
                    (pair["chosen"], pair["rejected"]) != (q["chosen"], q["rejected"]) for q in pairs
                ):
                    c, j = len(pair["chosen"]), len(pair["rejected"])
                    pair["length_ratio"] = round(c / j, 3) if j else None
                    pairs.append(pair)
                    heads.append(head)
                    stats["by_policy"][policy] = stats["by_policy"].get(policy, 0) + 1
        if "score" not in self.params.policies:
            stats["unscored"] = sum(1 for r in whole if self.score(r) is None)
        scored = [r for r in whole if self.score(r) is not None]
        best = max(scored, key=self.score) if scored else None
        head = next((h for h in heads if h is not None), None) or best
        if head is None and candidates:
            return None, stats
        head = head or (whole or siblings)[0]
        stats["length_ratios"] = [p["length_ratio"] for p in pairs]
        head["pairs"] = pairs
        head["meta"][self.ctx.name] = {**head["meta"].get(self.ctx.name, {}), **stats}
        for r in siblings:
            if r is head:
                continue
            if self.params.keep == "best" and not candidates:
                self.reject(r, f"sibling_not_kept: best is {head['id']}")
            else:
                r["pairs"] = []
        return head, stats

    def score(self, row: dict) -> float | None:
        by_id = self.candidate_scores
        s = by_id[id(row)] if id(row) in by_id else dotted(row, self.params.score_field)
        return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None

    def sides(self, chosen: dict, rejected: dict) -> dict:
        """A pair's texts and the finish reason each text carries."""
        return {
            "chosen": records.response(chosen),
            "rejected": records.response(rejected),
            "chosen_finish_reason": records.response_finish_reason(chosen),
            "rejected_finish_reason": records.response_finish_reason(rejected),
        }

    # ---- policies: each returns [(pair, chosen row or None)]; score/verifier get complete rows only ----

    def score_pairs(self, siblings: list[dict], stats: dict) -> list[tuple[dict, dict]]:
        p = self.params
        field = p.candidate_scores_field if self.candidate_scores else p.score_field
        scored = [r for r in siblings if self.score(r) is not None]
        stats["unscored"] += len(siblings) - len(scored)
        if len(scored) < 2:
            return []
        ranked = sorted(scored, key=self.score, reverse=True)  # stable: input order breaks equal scores
        worst, top = ranked[-1], self.score(ranked[0])
        margin_ok = [r for r in ranked if self.score(r) - self.score(worst) >= max(p.min_margin, 1e-9)]
        if not margin_ok:
            stats["ties"] += 1
            return []
        near = (
            margin_ok
            if p.length_tolerance is None
            else [r for r in margin_ok if top - self.score(r) <= p.length_tolerance]
        )
        target = None if p.length_tolerance is None else len(records.response(worst))
        best = pick(near, target)
        pair = {
            **self.sides(best, worst),
            "stage": self.ctx.name,
            "policy": f"score:{field}",
            "chosen_score": self.score(best),
            "rejected_score": self.score(worst),
            "margin": round(self.score(best) - self.score(worst), 3),
        }
        return [(pair, best)]

    def verifier_pairs(self, siblings: list[dict], stats: dict) -> list[tuple[dict, dict]]:
        p = self.params
        passed = [r for r in siblings if dotted(r, p.pass_field) is True]
        failed = [r for r in siblings if dotted(r, p.pass_field) is False]
        if not passed or not failed:
            return []
        bad = failed[0]
        target = len(records.response(bad)) if p.length_tolerance is not None else None
        good = pick(
            sorted(passed, key=lambda r: len(records.response(r))) if target is None else passed, target
        )
        pair = {**self.sides(good, bad), "stage": self.ctx.name, "policy": f"verifier:{p.pass_field}"}
        return [(pair, good)]  # without length control: the shortest passing response

    def carried_pairs(self, siblings: list[dict], stats: dict) -> list[tuple[dict, dict | None]]:
        found = []
        for r in siblings:
            for pair in r.get("pairs") or []:
                if not (
                    complete(pair.get("chosen_finish_reason"))
                    and complete(pair.get("rejected_finish_reason"))
                ):
                    stats["incomplete_pairs"] += 1  # a cut (or unrecorded) side never enters a pair
                    continue
                head = (
                    r
                    if pair["chosen"] == records.response(r) and complete(records.response_finish_reason(r))
                    else None
                )
                found.append(({**pair, "policy": pair.get("policy", pair.get("stage", "carried"))}, head))
        return found
