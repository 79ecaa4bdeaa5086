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
("coverage" | "score"), scores at the time they were picked}.

A row's text is every user turn of its conversation, in order (dedup.user_turns), for the embedding
and for the LLM ratings: a conversation whose last turn is "thanks" is rated and embedded by what it
asks, not by "thanks". LLM ratings ask for their shape (output_constraints: one of "1".."10"); where
the engine cannot constrain, the reply is read as free text (one "N/10", or a single integer 1..10;
anything else is unreadable) and meta.select.parse says why. A rating is read only from a reply that
ended by itself: a cut reply (finish reason "length", ...) is asked once more with twice the
max_tokens when on_truncated is "retry" (the default), and is no rating if still cut. A reply that is
not a rating counts 0 for its criterion, below every readable rating (0.1..1.0), never a neutral or
good score; meta.select.unrated names the rating and why, meta.select.raw keeps the text, and
plan["unrated"] counts them per rating.

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

from alignfactory.llm.base import Constraint, request_seed
from alignfactory.stages.base import RUBRICS, CorpusStage, LLMParams, render
from alignfactory.stages.curate.dedup import user_turns

OUT_OF = re.compile(r"(?<![\d.])(10|[1-9])\s*(?:/|out of)\s*10(?!\d|\.\d)", re.IGNORECASE)
INTEGER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?!\d|\.\d)")  # "7." is 7, "1.5" is not an integer
RATINGS = tuple(str(i) for i in range(1, 11))
RATING = Constraint.choice(RATINGS)  # the shape every LLM rating asks for
CRITERIA = ("diversity", "richness", "complexity", "completeness")
JUDGED = ("difficulty", "completeness")  # LLM scores


def judge_score(text: str) -> float | None:
    """A free-text rating, scaled to 0.1..1.0: the one "N/10" ("N out of 10") in the reply, else its
    one number when that is an integer 1..10 ("7", "Score: 8"); None when there is none or several
    ("On a scale of 1 to 10, I'd say 7" is not read as 1)."""
    out_of = set(OUT_OF.findall(text))
    if out_of:
        return int(out_of.pop()) / 10 if len(out_of) == 1 else None
    nums = INTEGER.findall(text)
    return int(nums[0]) / 10 if len(nums) == 1 and nums[0] in RATINGS else None


def read_rating(out) -> tuple[float | None, str, str | None]:
    """A Completion -> (score 0.1..1.0 or None, parse path, why it is no rating or None)."""
    text = out.texts[0]
    path = "structured" if out.constrained else f"free_text: {out.unconstrained_why or 'no constraint'}"
    if not out.complete(0):
        return None, path, f"truncated: finish_reason {out.finish_reason(0)!r}"
    score = (
        (int(text.strip()) / 10 if text.strip() in RATINGS else None)
        if out.constrained
        else judge_score(text)
    )
    return score, path, None if score is not None else "unparseable"


class Weights(BaseModel, extra="forbid"):
    diversity: float = Field(1.0, ge=0)
    richness: float = Field(0.0, ge=0)  # > 0 embeds every instruction (in summarize)
    complexity: float = Field(1.0, ge=0)
    completeness: float = Field(0.0, ge=0)  # > 0 calls the LLM judge once per row (in summarize)


class Select(CorpusStage):
    uses_llm = True  # only when difficulty_llm or weights.completeness > 0; the model is fingerprinted

    class Params(LLMParams):
        budget: int | None = Field(None, ge=1)  # rows to keep; wins over fraction
        fraction: float = Field(0.5, gt=0, le=1)
        tags_from: str = "tag_normalize"  # meta key with {"tags": [str | {"tag"}]}
        complexity_first: bool = True  # the InsTag coverage pass before the scored fill
        weights: Weights = Weights()
        difficulty_llm: bool = False
        difficulty_template: str = "select/difficulty.jinja"
        completeness_template: str = "select/completeness.jinja"
        max_tokens: int = Field(8, ge=1)  # a rating is one number (1-2 tokens constrained)
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

    @classmethod
    def output_constraints(cls, params) -> list[Constraint]:
        return [RATING] if params.difficulty_llm or params.weights.completeness > 0 else []

    @staticmethod
    def text(row: dict) -> str:
        """Every user turn, in order (one turn: the instruction itself)."""
        return "\n\n".join(user_turns(row))

    # -- per shard ----------------------------------------------------------------------------------

    def row_tags(self, row: dict) -> list[str]:
        tags = row["meta"].get(self.params.tags_from, {}).get("tags") or []
        return list(dict.fromkeys(t["tag"] if isinstance(t, dict) else t for t in tags))

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

    def judge(self, rows, texts, template, what) -> dict[str, list]:
        """One rating per row: {"": scores (None = no rating), "_raw": texts, "_parse": parse paths,
        "_unrated": why each is no rating (None when it is one)}."""
        if not rows:
            return {"": [], "_raw": [], "_parse": [], "_unrated": []}
        convs = [[{"role": "user", "content": render(template, instruction=t).strip()}] for t in texts]
        sampling = replace(
            self.ctx.sampling,
            n=1,
            max_tokens=self.params.max_tokens,
            temperature=self.params.temperature,
            constraint=RATING,
        )
        outs = self.chat(convs, sampling, [f"{r['id']}:{what}" for r in rows])
        redo = [i for i, o in enumerate(outs) if not o.complete(0)]
        if redo and self.params.on_truncated == "retry":  # once, with twice the budget
            longer = replace(sampling, max_tokens=2 * sampling.max_tokens)
            again = self.chat(
                [convs[i] for i in redo], longer, [f"{rows[i]['id']}:{what}:retry" for i in redo]
            )
            for i, o in zip(redo, again, strict=True):
                o.retried.append(0)
                outs[i] = o
        read = [read_rating(o) for o in outs]
        return {
            "": [x[0] for x in read],
            "_raw": [o.texts[0] for o in outs],
            "_parse": [
                x[1] + (" (retried at 2x max_tokens)" if o.retried else "")
                for x, o in zip(read, outs, strict=True)
            ],
            "_unrated": [x[2] for x in read],
        }

    def chat(self, convs: list, sampling, keys: list[str]) -> list:
        seeds = [request_seed(self.ctx.seed, f"{self.ctx.name}:{k}") for k in keys]
        outs = self.engine.chat(convs, sampling, seeds)
        for o in outs:
            self.tokens_in += o.prompt_tokens
            self.tokens_out += o.completion_tokens
        return outs

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
        extra = ("_raw", "_parse", "_unrated")
        llm = {
            what: self.gather(summaries, what)
            for what in JUDGED + tuple(j + x for j in JUDGED for x in extra)
        }
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

    # -- per shard ----------------------------------------------------------------------------------

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
