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

summarize(rows, shard) -> row ids (bytes), tags as a shard vocabulary + CSR arrays, LLM scores, and an
(n, dim) float16 embedding array when richness is on; combine() runs the sampler (select_sampler: a
lazy priority queue, near-linear in rows, the same picks as the dense greedy) over those and returns
per-shard arrays (rank, phase, scores); apply() marks rows by (shard, position).
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
from alignfactory.stages.curate.select_sampler import PHASES, Sampler

OUT_OF = re.compile(r"(?<![\d.])(10|[1-9])\s*(?:/|out of)\s*10(?!\d|\.\d)", re.IGNORECASE)
INTEGER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?!\d|\.\d)")  # "7." is 7, "1.5" is not an integer
RATINGS = tuple(str(i) for i in range(1, 11))
RATING = Constraint.choice(RATINGS)  # the shape every LLM rating asks for
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
        # ids as UTF-8 bytes (16 B a row, not a str object); tags as a local vocabulary + CSR arrays
        out = {"shard": shard, "ids": np.array([r["id"].encode() for r in rows], dtype="S")}
        out |= tag_csr([self.row_tags(r) for r in rows])
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
        sizes = [len(s["ids"]) for s in summaries]
        n = sum(sizes)
        indptr, indices, vocab = merge_csr(summaries)
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
        sampler = Sampler(indptr, indices, len(vocab), emb, w, llm["difficulty"], llm["completeness"])
        if self.params.complexity_first:
            sampler.cover(budget)
        sampler.fill(budget)
        sampler.finish()  # unpicked rows against the final chosen set, one pass
        rated = [what for what in JUDGED if llm[what] is not None]
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        shards = {}
        for s, a, b in zip(summaries, starts[:-1], starts[1:], strict=True):
            shards[s["shard"]] = {
                "ids": s["ids"],
                "rank": sampler.rank[a:b],  # -1: not picked
                "phase": sampler.phase[a:b],
                "vals": sampler.vals[a:b],  # criteria (names) + score, unrounded
                "ratings": {
                    what: {x: llm[what + x][a:b] for x in extra} for what in rated
                },  # per row: raw text, parse path, why no rating (None when it is one)
            }
        unrated = {what: sum(1 for x in llm[f"{what}_unrated"] if x) for what in rated}
        return {
            "shards": shards,
            "names": sampler.names,
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
        part = plan["shards"].get(shard) or {"ids": np.array([], dtype="S")}
        names = plan["names"]
        for pos, row in enumerate(rows):
            have = part["ids"][pos].decode() if pos < len(part["ids"]) else None
            if have != row["id"]:
                raise ValueError(f"select: row {shard}:{pos} is {row['id']}, the plan has {have}")
            meta = self.meta(row)
            ratings = part["ratings"]
            if ratings:
                meta["raw"] = {what: r["_raw"][pos] for what, r in ratings.items()}
                meta["parse"] = {what: r["_parse"][pos] for what, r in ratings.items()}
                unrated = {what: r["_unrated"][pos] for what, r in ratings.items() if r["_unrated"][pos]}
                if unrated:
                    meta["unrated"] = unrated
            vals = part["vals"][pos]
            if part["rank"][pos] >= 0:  # picked: its scores when picked, rounded as scalars
                scores = {k: round(float(v), 4) for k, v in zip([*names, "score"], vals, strict=True)}
                meta.update(
                    {"rank": int(part["rank"][pos]), "phase": PHASES[part["phase"][pos]], "scores": scores}
                )
                continue
            scores = dict(zip([*names, "score"], np.round(vals, 4).tolist(), strict=True))
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


def tag_csr(tag_lists: list[list[str]]) -> dict:
    """Rows' tags as {"vocab": [tag, first-seen order], "indptr": (n+1,) int64, "indices": int32}."""
    vocab: dict[str, int] = {}
    flat = [vocab.setdefault(t, len(vocab)) for tags in tag_lists for t in tags]
    lens = np.fromiter((len(t) for t in tag_lists), dtype=np.int64, count=len(tag_lists))
    return {
        "vocab": list(vocab),
        "indptr": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        "indices": np.array(flat, dtype=np.int32),
    }


def merge_csr(summaries: list) -> tuple[np.ndarray, np.ndarray, dict]:
    """Shards' CSR tags -> one CSR over a global vocabulary (shard order)."""
    vocab: dict[str, int] = {}
    ptrs, idx, offset = [np.zeros(1, dtype=np.int64)], [], 0
    for s in summaries:
        glob = np.array([vocab.setdefault(t, len(vocab)) for t in s["vocab"]], dtype=np.int32)
        idx.append(glob[s["indices"]] if len(s["indices"]) else s["indices"])
        ptrs.append(s["indptr"][1:] + offset)
        offset += int(s["indptr"][-1])
    indices = np.concatenate(idx) if idx else np.zeros(0, dtype=np.int32)
    return np.concatenate(ptrs), indices.astype(np.int32), vocab
