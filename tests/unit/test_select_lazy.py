"""select's lazy greedy against the dense greedy it replaced (kept here, verbatim, as OldSelect and
OldSampler): the same rows kept, ranks, phases, scores and reasons on randomized tag sets, weights,
budgets, shards, embeddings and LLM ratings."""

from __future__ import annotations

import copy
import json
import math
import random

import numpy as np
import pytest

from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.select import JUDGED, Select
from tests.unit.scripted import ScriptedEngine, last_user

CRITERIA = ("diversity", "richness", "complexity", "completeness")


class OldSelect(Select):
    """select's summarize/combine/apply before the lazy greedy (commit 024b9df)."""

    def summarize(self, rows: list[dict], shard: int) -> dict:
        p = self.params
        texts = [self.text(r) for r in rows]
        out = {"shard": shard, "ids": [r["id"] for r in rows], "tags": [self.row_tags(r) for r in rows]}
        # (n, dim) float16: half the bytes of a summary; cosines stay within ~1e-3
        out["emb"] = self.embedder.encode(texts).astype(np.float16) if p.weights.richness > 0 else None
        for what, on, template in (
            ("difficulty", p.difficulty_llm, p.difficulty_template),
            ("completeness", p.weights.completeness > 0, p.completeness_template),
        ):
            judged = self.judge(rows, texts, template, what) if on else {}
            for key in ("", "_raw", "_parse", "_unrated"):
                out[what + key] = judged.get(key)
        return out

    def combine(self, summaries: list) -> dict:
        keys = [f"{s['shard']}:{i}" for s in summaries for i in range(len(s["ids"]))]
        ids = [x for s in summaries for x in s["ids"]]
        tags = [set(t) for s in summaries for t in s["tags"]]
        n = len(keys)
        budget = min(n, self.params.budget or math.ceil(self.params.fraction * n))
        w = self.params.weights
        emb = (
            np.concatenate([s["emb"] for s in summaries]).astype(np.float32) if w.richness > 0 and n else None
        )
        extra = ("_raw", "_parse", "_unrated")
        llm = {
            what: self.gather(summaries, what)
            for what in JUDGED + tuple(j + x for j in JUDGED for x in extra)
        }
        sampler = OldSampler(tags, emb, w, llm["difficulty"], llm["completeness"])
        chosen: list[tuple[int, str, dict]] = []  # (row index, phase, scores when picked)
        if self.params.complexity_first:
            for i in sorted(range(n), key=lambda i: (-len(tags[i]), i)):
                if len(chosen) >= budget:
                    break
                if tags[i] - sampler.covered:
                    chosen.append((i, "coverage", sampler.scores(i)))
                    sampler.take(i)
        while len(chosen) < budget:
            i = sampler.best()
            chosen.append((i, "score", sampler.scores(i)))
            sampler.take(i)
        picked = {keys[i]: {"rank": k, "phase": ph, "scores": sc} for k, (i, ph, sc) in enumerate(chosen)}
        final = sampler.all_scores()  # against the final chosen set, one pass
        final = {keys[i]: final[i] for i in range(n) if keys[i] not in picked}
        rated = [what for what in JUDGED if llm[what] is not None]
        ratings = {  # per row and rating: its raw text, parse path and, when it is no rating, why
            keys[i]: {
                what: {"raw": llm[f"{what}_raw"][i], "parse": llm[f"{what}_parse"][i]}
                | ({"unrated": llm[f"{what}_unrated"][i]} if llm[f"{what}_unrated"][i] else {})
                for what in rated
            }
            for i in range(n)
        }
        unrated = {what: sum(1 for x in llm[f"{what}_unrated"] if x) for what in rated}
        return {
            "ids": dict(zip(keys, ids, strict=True)),
            "picked": picked,
            "unpicked": final,
            "ratings": ratings,
            "unrated": unrated,  # rows whose rating is no rating, per rating
            "budget": budget,
            "rows": n,
        }

    @staticmethod
    def gather(summaries: list, what: str) -> list | None:
        if summaries and summaries[0].get(what) is None:
            return None
        return [x for s in summaries for x in s[what]]

    def apply(self, rows: list[dict], plan: dict, shard: int) -> list[dict]:
        for pos, row in enumerate(rows):
            key = f"{shard}:{pos}"
            if plan["ids"].get(key) != row["id"]:
                raise ValueError(f"select: row {key} is {row['id']}, the plan has {plan['ids'].get(key)}")
            meta = self.meta(row)
            ratings = plan["ratings"].get(key) or {}
            if ratings:
                meta["raw"] = {what: r["raw"] for what, r in ratings.items()}
                meta["parse"] = {what: r["parse"] for what, r in ratings.items()}
                unrated = {what: r["unrated"] for what, r in ratings.items() if "unrated" in r}
                if unrated:
                    meta["unrated"] = unrated
            if key in plan["picked"]:
                meta.update(plan["picked"][key])
                continue
            scores = plan["unpicked"][key]
            meta["scores"] = scores
            detail = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
            self.reject(row, f"not_selected: budget {plan['budget']} of {plan['rows']} rows; {detail}")
        return rows


class OldSampler:
    """Greedy state: covered tags, each row's uncovered-tag count, its max similarity to the chosen."""

    def __init__(self, tags: list[set], emb, weights, difficulty, completeness):
        n = len(tags)
        self.tags, self.emb, self.w = tags, emb, weights
        self.covered: set = set()
        self.free = np.ones(n, dtype=bool)  # not chosen yet
        self.new = np.array([len(t) for t in tags], dtype=np.float64)  # uncovered tags per row
        self.size = np.maximum(self.new, 1)
        self.by_tag: dict[str, list[int]] = {}
        for i, ts in enumerate(tags):
            for t in ts:
                self.by_tag.setdefault(t, []).append(i)
        self.sim = np.full(n, -1.0)  # max cosine to the chosen rows (-1: none chosen)
        most = max((len(t) for t in tags), default=0) or 1
        cx = np.array([len(t) for t in tags], dtype=np.float64) / most
        # no rating (unreadable, cut) counts 0: below every readable rating (0.1..1.0), never neutral
        if difficulty is not None:
            cx = (cx + np.array([0.0 if d is None else d for d in difficulty])) / 2
        self.complexity = cx
        self.completeness = (
            None if completeness is None else np.array([0.0 if c is None else c for c in completeness])
        )

    def criteria(self) -> dict[str, np.ndarray]:
        out = {
            "diversity": np.where([bool(t) for t in self.tags], self.new / self.size, 0.0),
            "complexity": self.complexity,
        }
        if self.emb is not None:
            out["richness"] = np.where(self.sim < -0.5, 1.0, np.clip(1.0 - self.sim, 0.0, 1.0))
        if self.completeness is not None:
            out["completeness"] = self.completeness
        return {k: out[k] for k in CRITERIA if k in out and getattr(self.w, k) > 0}

    def total(self, crit: dict[str, np.ndarray]) -> np.ndarray:
        weight = sum(getattr(self.w, k) for k in crit)
        return sum(getattr(self.w, k) * v for k, v in crit.items()) / weight

    def scores(self, i: int) -> dict[str, float]:
        crit = self.criteria()
        return {k: round(float(v[i]), 4) for k, v in crit.items()} | {
            "score": round(float(self.total(crit)[i]), 4)
        }

    def all_scores(self) -> list[dict[str, float]]:
        crit = self.criteria()
        crit["score"] = self.total(crit)
        rounded = {k: np.round(v.astype(np.float64), 4).tolist() for k, v in crit.items()}
        return [{k: v[i] for k, v in rounded.items()} for i in range(len(self.tags))]

    def best(self) -> int:
        total = np.where(self.free, self.total(self.criteria()), -np.inf)
        return int(np.argmax(total))  # ties: the first in input order

    def take(self, i: int) -> None:
        self.free[i] = False
        for t in self.tags[i] - self.covered:
            self.covered.add(t)
            for j in self.by_tag[t]:
                self.new[j] -= 1
        if self.emb is not None:
            self.sim = np.maximum(self.sim, self.emb @ self.emb[i])


class RandomEmbedder:
    """Fixed random unit vectors per text; some texts share a vector (exact cosine ties)."""

    def __init__(self, rng: random.Random, dim: int):
        self.rng, self.dim, self.vectors = rng, dim, {}

    def encode(self, texts):
        for t in texts:
            if t not in self.vectors:
                if self.vectors and self.rng.random() < 0.2:
                    self.vectors[t] = self.rng.choice(list(self.vectors.values()))
                else:
                    self.vectors[t] = [self.rng.gauss(0, 1) for _ in range(self.dim)]
        v = np.array([self.vectors[t] for t in texts], dtype=np.float32).reshape(len(texts), self.dim)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def random_case(seed: int):
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    vocab = [f"t{i}" for i in range(rng.randint(1, 12))]
    rows = []
    for i in range(n):
        tags = rng.sample(vocab, rng.randint(0, min(5, len(vocab))))
        tags += rng.sample(tags, min(len(tags), rng.randint(0, 1)))  # repeats are read once
        row = records.new_row(
            [{"role": "user", "content": f"instruction {i % max(1, n - 3)} {i}"}], {"file": "t", "line": i}
        )
        row["meta"]["tag_normalize"] = {"tags": [{"tag": t} if rng.random() < 0.3 else t for t in tags]}
        rows.append(row)
    weights = {k: rng.choice([0, 0, 0.5, 1, 2]) for k in CRITERIA}
    if not any(weights.values()):
        weights["diversity"] = 1
    params = {
        "weights": weights,
        "complexity_first": rng.random() < 0.6,
        "difficulty_llm": rng.random() < 0.3,
    }
    if rng.random() < 0.5:
        params["budget"] = rng.randint(1, n + 2)
    else:
        params["fraction"] = rng.choice([0.1, 0.3, 0.5, 0.9, 1.0])
    replies = {
        f"instruction {i % max(1, n - 3)} {i}": rng.choice([*map(str, range(1, 11)), "no idea"])
        for i in range(n)
    }
    cuts = sorted(rng.sample(range(n + 1), rng.randint(0, min(3, n)))) + [n]
    return rows, params, replies, sorted(set([0, *cuts])), rng.randint(2, 4)


def run(cls, rows, params, replies, cuts, dim, seed):
    def rule(conv, k, s):
        return next(r for t, r in replies.items() if last_user(conv).endswith(t))

    engine = ScriptedEngine(rule=rule, constrains=False)
    emb = RandomEmbedder(random.Random(seed), dim)
    stage = cls(Select.Params(**params), StageContext("select", 5), engine=engine, embedder=emb)
    rows = copy.deepcopy(rows)
    parts = [rows[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b >= a]
    summaries = [stage.summarize(p, k) for k, p in enumerate(parts)]
    plan = stage.combine(summaries)
    return [r for k, p in enumerate(parts) for r in stage.apply(p, plan, k)]


@pytest.mark.parametrize("seed", range(300))
def test_lazy_greedy_selects_and_scores_as_the_dense_greedy(seed):
    rows, params, replies, cuts, dim = random_case(seed)
    old = run(OldSelect, rows, params, replies, cuts, dim, seed)
    new = run(Select, rows, params, replies, cuts, dim, seed)
    assert json.dumps(new, sort_keys=False) == json.dumps(old, sort_keys=False)
