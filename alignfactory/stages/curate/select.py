"""select (corpus stage): a diverse, complex subset within a budget.

InsTag's complexity-first diverse sampling (Lu et al. 2023, arXiv:2308.07074, sec. 4.1): rows sorted
by number of canonical tags, descending (ties: input order); a row is taken when it adds a tag the
chosen set does not cover yet. The rest of the budget is then filled greedily by a weighted score of
the Qwen2 report's criteria (Yang et al. 2024, arXiv:2407.10671, sec. 4.1), each switchable by its
weight (0 = off), each in [0, 1]:

    diversity     share of the row's tags not yet covered by the chosen rows
    richness      1 - max cosine similarity of the row's embedding to the chosen rows' (1 when none)
    complexity    tag count / the corpus's largest tag count; with difficulty_llm on, averaged with an
                  LLM difficulty score / 10 (rubrics/select/difficulty.jinja)
    completeness  an LLM judge's intent-completeness score / 10 (rubrics/select/completeness.jinja)
    score         sum(weight * criterion) / sum(weights)

Budget: `budget` rows if set, else ceil(`fraction` x rows). Unselected rows are rejected with their
scores against the final chosen set in the reason; kept rows get meta.select = {rank, phase
("coverage" | "score"), scores at the time they were picked}. An LLM judge reply with no number in
1..10 scores 0.5 (neutral) and its raw text stays in meta.select.raw.

summarize(rows, shard) -> per-row (id, tags, LLM scores) and an (n, dim) float16 embedding array when
richness is on; combine() runs the sampler over those; apply() marks rows by (shard, position).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from alignfactory import records
from alignfactory.llm.base import request_seed
from alignfactory.stages.base import RUBRICS, CorpusStage, render

NUMBER = re.compile(r"(?<![\d.])(10|[1-9])(?:\s*/\s*10)?(?![\d.])")
CRITERIA = ("diversity", "richness", "complexity", "completeness")
JUDGED = ("difficulty", "completeness")  # LLM scores


def judge_score(text: str) -> float | None:
    """The first integer 1..10 in a judge reply (e.g. "7", "Score: 8/10"), scaled to 0.1..1.0."""
    m = NUMBER.search(text)
    return int(m.group(1)) / 10 if m else None


class Weights(BaseModel, extra="forbid"):
    diversity: float = Field(1.0, ge=0)
    richness: float = Field(0.0, ge=0)  # > 0 embeds every instruction (in summarize)
    complexity: float = Field(1.0, ge=0)
    completeness: float = Field(0.0, ge=0)  # > 0 calls the LLM judge once per row (in summarize)


class Select(CorpusStage):
    uses_llm = True  # only when difficulty_llm or weights.completeness > 0; the model is fingerprinted

    class Params(BaseModel, extra="forbid"):
        budget: int | None = Field(None, ge=1)  # rows to keep; wins over fraction
        fraction: float = Field(0.5, gt=0, le=1)
        tags_from: str = "tag_normalize"  # meta key with {"tags": [str | {"tag"}]}
        complexity_first: bool = True  # the InsTag coverage pass before the scored fill
        weights: Weights = Weights()
        difficulty_llm: bool = False
        difficulty_template: str = "select/difficulty.jinja"
        completeness_template: str = "select/completeness.jinja"
        max_tokens: int = Field(8, ge=1)  # judge replies are one number
        temperature: float = Field(0.0, ge=0)

    requires = {"meta.tag_normalize.tags": "canonical tags (params.tags_from)"}
    adds = ("meta.select",)

    @staticmethod
    def uses_model(params) -> bool:
        """summarize loads a model (embedder or LLM judge): the runner runs it in actors."""
        w = params.weights
        return w.richness > 0 or w.completeness > 0 or params.difficulty_llm

    def __init__(self, params, ctx, engine=None, embedder=None):
        super().__init__(params, ctx)
        self._engine, self._embedder = engine, embedder  # built on first use when not handed in
        if sum(params.weights.model_dump().values()) <= 0:
            raise ValueError("select: params.weights: at least one weight must be > 0")

    @classmethod
    def template_files(cls, params) -> list[Path]:
        return [RUBRICS / params.difficulty_template, RUBRICS / params.completeness_template]

    # -- per shard ----------------------------------------------------------------------------------

    def row_tags(self, row: dict) -> list[str]:
        tags = row["meta"].get(self.params.tags_from, {}).get("tags") or []
        return list(dict.fromkeys(t["tag"] if isinstance(t, dict) else t for t in tags))

    def summarize(self, rows: list[dict], shard: int) -> dict:
        p = self.params
        texts = [records.instruction(r) for r in rows]
        out = {"shard": shard, "ids": [r["id"] for r in rows], "tags": [self.row_tags(r) for r in rows]}
        # (n, dim) float16: half the bytes of a summary; cosines stay within ~1e-3
        out["emb"] = self.embedder.encode(texts).astype(np.float16) if p.weights.richness > 0 else None
        for what, on, template in (
            ("difficulty", p.difficulty_llm, p.difficulty_template),
            ("completeness", p.weights.completeness > 0, p.completeness_template),
        ):
            out[what], out[f"{what}_raw"] = self.judge(rows, texts, template, what) if on else (None, None)
        return out

    def judge(self, rows, texts, template, what) -> tuple[list[float | None], list[str]]:
        if not rows:
            return [], []
        convs = [[{"role": "user", "content": render(template, instruction=t).strip()}] for t in texts]
        sampling = replace(
            self.ctx.sampling, n=1, max_tokens=self.params.max_tokens, temperature=self.params.temperature
        )
        seeds = [request_seed(self.ctx.seed, f"{self.ctx.name}:{r['id']}:{what}") for r in rows]
        outs = self.engine.chat(convs, sampling, seeds)
        for o in outs:
            self.tokens_in += o.prompt_tokens
            self.tokens_out += o.completion_tokens
        raws = [o.texts[0] for o in outs]
        return [judge_score(t) for t in raws], raws

    # -- in one place -------------------------------------------------------------------------------

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
        llm = {what: self.gather(summaries, what) for what in JUDGED + tuple(f"{j}_raw" for j in JUDGED)}
        sampler = Sampler(tags, emb, w, llm["difficulty"], llm["completeness"])
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
        raw = {
            keys[i]: {what: llm[f"{what}_raw"][i] for what in JUDGED if llm[f"{what}_raw"]} for i in range(n)
        }
        return {
            "ids": dict(zip(keys, ids, strict=True)),
            "picked": picked,
            "unpicked": final,
            "raw": raw,
            "budget": budget,
            "rows": n,
        }

    @staticmethod
    def gather(summaries: list, what: str) -> list | None:
        if summaries and summaries[0].get(what) is None:
            return None
        return [x for s in summaries for x in s[what]]

    # -- per shard ----------------------------------------------------------------------------------

    def apply(self, rows: list[dict], plan: dict, shard: int) -> list[dict]:
        for pos, row in enumerate(rows):
            key = f"{shard}:{pos}"
            if plan["ids"].get(key) != row["id"]:
                raise ValueError(f"select: row {key} is {row['id']}, the plan has {plan['ids'].get(key)}")
            meta = self.meta(row)
            if any(plan["raw"].get(key, {}).values()):
                meta["raw"] = plan["raw"][key]
            if key in plan["picked"]:
                meta.update(plan["picked"][key])
                continue
            scores = plan["unpicked"][key]
            meta["scores"] = scores
            detail = ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
            self.reject(row, f"not_selected: budget {plan['budget']} of {plan['rows']} rows; {detail}")
        return rows

    @property
    def engine(self):
        if self._engine is None:
            from alignfactory.llm import make_engine

            self._engine = make_engine(self.ctx.model, batch_size=self.ctx.batch_size)
        return self._engine

    @property
    def embedder(self):
        if self._embedder is None:
            from alignfactory.llm.embed import Embedder

            self._embedder = Embedder()
        return self._embedder


class Sampler:
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
        if difficulty is not None:
            cx = (cx + np.array([0.5 if d is None else d for d in difficulty])) / 2
        self.complexity = cx
        self.completeness = (
            None if completeness is None else np.array([0.5 if c is None else c for c in completeness])
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
