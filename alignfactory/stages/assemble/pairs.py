"""pairs (corpus stage): preference pairs from sibling responses to one prompt.

Siblings are the rows that share a prompt (the conversation before the final assistant turn): the n
samples `generate` makes of one row (same lineage parent), and whatever later stages derived from
them. Per group, each policy in params.policies adds at most one pair:

    score      best vs worst by a score (meta.judge.score, meta.reward.score: score_field), when
               best - worst >= min_margin; otherwise the group is a tie: skipped and counted.
    verifier   a passing vs a failing sibling (pass_field: the dotted path of a bool a verifier wrote).
    carried    the pairs rows already carry (constitution's revised-vs-original and aligned-vs-deviating,
               reject_sample's correct-vs-incorrect, exec_feedback's pass-vs-fail), deduplicated.

Length-bias control: every pair records length_ratio = len(chosen) / len(rejected) (characters);
with length_tolerance set, the score and verifier policies choose, among the siblings within
length_tolerance of the best score (or among all passing ones), the one closest in length to the
rejected response instead of the single best.

    row out: the group's representative (the chosen response of its first pair, else its best-scored
             row, else its first) with `pairs` = the group's final pairs, and meta.pairs = {group_size,
             ties, unscored, by_policy, length_ratios}. The other siblings: keep="best" rejects them
             ("sibling_not_kept: best is <id>"), keep="all" keeps them with `pairs` = [].
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

    requires = {"messages": "conversations ending in an assistant turn; siblings share the prompt"}
    adds = ("pairs", "meta.pairs")

    def __call__(self, rows: list[dict]) -> list[dict]:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            if records.response(r) is None:
                self.reject(r, "no_response: pairs needs responses")
            else:
                groups.setdefault(group_key(r), []).append(r)
        for siblings in groups.values():
            self.group(siblings)
        return rows

    def group(self, siblings: list[dict]) -> None:
        stats = {"group_size": len(siblings), "ties": 0, "unscored": 0, "by_policy": {}}
        pairs, heads = [], []  # heads: rows whose response is a chosen one, in policy order
        for policy in self.params.policies:
            policies = {
                "score": self.score_pairs,
                "verifier": self.verifier_pairs,
                "carried": self.carried_pairs,
            }
            found = policies[policy](siblings, stats)
            for pair, head in found:
                if pair["chosen"] != pair["rejected"] and all(
                    (pair["chosen"], pair["rejected"]) != (q["chosen"], q["rejected"]) for q in pairs
                ):
                    c, j = len(pair["chosen"]), len(pair["rejected"])
                    pair["length_ratio"] = round(c / j, 3) if j else None
                    pairs.append(pair)
                    heads.append(head)
                    stats["by_policy"][policy] = stats["by_policy"].get(policy, 0) + 1
        scored = [r for r in siblings if self.score(r) is not None]
        best = max(scored, key=self.score) if scored else None
        head = next((h for h in heads if h is not None), None) or best or siblings[0]
        stats["length_ratios"] = [p["length_ratio"] for p in pairs]
        head["pairs"] = pairs
        head["meta"]["pairs"] = stats
        for r in siblings:
            if r is head:
                continue
            if self.params.keep == "best":
                self.reject(r, f"sibling_not_kept: best is {head['id']}")
            else:
                r["pairs"] = []

    def score(self, row: dict) -> float | None:
        s = dotted(row, self.params.score_field)
        return float(s) if isinstance(s, (int, float)) and not isinstance(s, bool) else None

    # ---- policies: each returns [(pair, chosen row or None)] ------------------------------------

    def score_pairs(self, siblings: list[dict], stats: dict) -> list[tuple[dict, dict]]:
        p = self.params
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
            "chosen": records.response(best),
            "rejected": records.response(worst),
            "stage": self.ctx.name,
            "policy": f"score:{p.score_field}",
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
        pair = {
            "chosen": records.response(good),
            "rejected": records.response(bad),
            "stage": self.ctx.name,
            "policy": f"verifier:{p.pass_field}",
        }
        return [(pair, good)]  # without length control: the shortest passing response

    def carried_pairs(self, siblings: list[dict], stats: dict) -> list[tuple[dict, dict | None]]:
        found = []
        for r in siblings:
            for pair in r.get("pairs") or []:
                head = r if pair["chosen"] == records.response(r) else None
                found.append(({**pair, "policy": pair.get("policy", pair.get("stage", "carried"))}, head))
        return found
