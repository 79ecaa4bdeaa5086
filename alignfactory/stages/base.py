"""The stage contract.

A row stage maps a list of rows independently: `__call__(rows) -> rows`, each returned row either
kept (columns added) or marked `reject`. A corpus stage (kind = "corpus") gets every row of its
input at once and returns the new whole. Both are plain classes, testable on a list; the runner
builds them inside Ray workers, so constructors are where heavy state (engines) is made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel

from alignfactory import records
from alignfactory.llm.base import Constraint, EngineError, Sampling, request_seed
from alignfactory.llm.config import ModelConfig

RUBRICS = Path(__file__).resolve().parents[2] / "rubrics"


@dataclass
class StageContext:
    name: str  # registry name of the stage
    index: int  # position in the spec (1-based; 0 is read)
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: Sampling = field(default_factory=Sampling)
    batch_size: int = 8
    run_dir: Path | None = None  # set for stages that write run outputs (export)


class Stage:
    kind: ClassVar[str] = "row"  # "row" | "corpus"
    uses_llm: ClassVar[bool] = False
    requires: ClassVar[dict[str, str]] = {}  # what a row must carry, for error messages
    adds: ClassVar[tuple[str, ...]] = ()

    class Params(BaseModel, extra="forbid"):
        pass

    def __init__(self, params: BaseModel, ctx: StageContext):
        self.params = params
        self.ctx = ctx
        self.tokens_in = 0
        self.tokens_out = 0

    def __call__(self, rows: list[dict]) -> list[dict]:
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------

    def reject(self, row: dict, reason: str, raw: str | None = None) -> dict:
        return records.reject(row, self.ctx.name, reason, raw)

    def meta(self, row: dict) -> dict:
        return row["meta"].setdefault(self.ctx.name, {})

    @classmethod
    def template_files(cls, params: BaseModel) -> list[Path]:
        """Templates whose text goes into the fingerprint (edit a prompt -> the stage re-runs)."""
        return []

    @classmethod
    def output_constraints(cls, params: BaseModel) -> list[Constraint]:
        """The output shapes the stage asks its engine for (structured outputs): part of the
        fingerprint, so changing a schema re-runs the stage."""
        return []

    @classmethod
    def data_files(cls, params: BaseModel) -> list[str]:
        """Files the stage reads besides its rows (benchmark lists): their size and mtime go into the
        fingerprint, so replacing one re-runs the stage."""
        return []


class CorpusStage(Stage):
    """A corpus stage that scales past one process: map -> small summary -> combine -> apply.

    summarize(rows, shard) runs once per input shard, row-parallel on Ray Data (signatures, n-gram
    sets, tag counts, embeddings); combine(summaries) runs in one place and sees only those summaries,
    in shard order, returning a plan (candidate pairs -> clusters, a tag mapping, a selection);
    apply(rows, plan, shard) runs per shard and marks/annotates its rows. `shard` is the input shard's
    index, so "first in input order" is (shard, position). Called on a plain list, it is one shard.
    """

    kind = "corpus"
    distributed: ClassVar[bool] = True
    # True: combine takes a sequence that loads each shard's summary file on access (and again on
    # a second access) instead of a list of all of them in memory; for summaries too big to hold
    streams_summaries: ClassVar[bool] = False

    @staticmethod
    def uses_model(params: BaseModel) -> bool:
        """True when summarize loads a model (an embedder): the runner then runs it in an actor pool,
        on a GPU when the stage's resources give one."""
        return False

    def summarize(self, rows: list[dict], shard: int):
        raise NotImplementedError

    def combine(self, summaries: list):
        raise NotImplementedError

    def apply(self, rows: list[dict], plan, shard: int) -> list[dict]:
        raise NotImplementedError

    def touched(self, plan, shard: int) -> list[int] | None:
        """The positions in `shard` that apply changes, or None (any row may change). With a list,
        the runner parses only those rows and passes apply a {position: row} dict instead of the
        list; apply must then change rows in place (annotate or reject, never drop or add), and the
        other rows are copied to the output byte for byte. Dedup and decontaminate touch a few rows
        in a million; parsing and re-writing the rest would be most of their cost."""
        return None

    def __call__(self, rows: list[dict]) -> list[dict]:
        return self.apply(rows, self.combine([self.summarize(rows, 0)]), 0)


class LLMParams(BaseModel, extra="forbid"):
    """Params every LLM stage has. on_truncated: what to do with a text that did not end by itself
    (finish reason "length", or anything but "stop"): "retry" asks once more with twice the
    max_tokens (a new seed), then the stage rejects what is still incomplete as `truncated`, raw kept;
    "reject" rejects at once. Never does an incomplete text become data or a decision."""

    on_truncated: Literal["reject", "retry"] = "retry"


class LLMStage(Stage):
    """A row stage that calls an engine: build_messages -> engine.chat -> parse."""

    uses_llm = True
    Params = LLMParams

    def __init__(self, params: BaseModel, ctx: StageContext, engine=None):
        super().__init__(params, ctx)
        self._engine = engine
        self.load_seconds = 0.0  # engine load not yet reported (taken by the worker's shard stats)
        self.retries = 0  # samples re-asked at twice the budget (on_truncated: retry)

    @property
    def engine(self):
        """The engine, loaded on first use: an actor whose shards have no row for it (reject_sample
        after a selective gate) loads no model, and a pipeline's actors load one after another as
        rows reach them instead of all at a segment's start (on 2 cores, 5 loads at once took ~35 s
        each; on a GPU a load is minutes)."""
        if self._engine is None:
            from alignfactory.llm import make_engine

            t0 = time.perf_counter()
            try:
                self._engine = make_engine(self.ctx.model, batch_size=self.ctx.batch_size)
            except EngineError:
                raise
            except Exception as e:  # a model that cannot load stops the run; it is not the rows' fault
                raise EngineError(
                    f"{self.ctx.name}: loading the model failed: {type(e).__name__}: {e}"
                ) from e
            self.load_seconds += time.perf_counter() - t0
        return self._engine

    @property
    def model_id(self) -> str | None:
        """The model that answered, for row metadata; None while no call loaded one (a row judged
        from its input alone names no model)."""
        return getattr(self._engine, "model_id", None)

    def seeds(self, rows: list[dict], what: str | None = None) -> list[int]:
        """One seed per row, keyed by (stage, row id[, what]): a stage that prompts a row several times
        names each call (`what`) so they draw different samples; a re-run draws the same ones."""
        suffix = f":{what}" if what else ""
        return [request_seed(self.ctx.seed, f"{self.ctx.name}:{r['id']}{suffix}") for r in rows]

    def complete(
        self,
        conversations: list[list[dict]],
        rows: list[dict],
        sampling: Sampling | None = None,
        what: str | None = None,
    ):
        """engine.chat over rows, counting tokens; returns Completions in row order. With
        params.on_truncated == "retry", every sample that did not finish with "stop" is asked once
        more (n=1, twice the max_tokens, its own seed) and replaced in place; its index goes into
        Completion.retried. The caller still checks Completion.complete(k): a retry can be cut too."""
        sampling = sampling or self.ctx.sampling
        outs = self._chat(conversations, sampling, self.seeds(rows, what))
        if getattr(self.params, "on_truncated", "reject") != "retry":
            return outs
        redo = [(i, k) for i, o in enumerate(outs) for k in range(len(o.texts)) if not o.complete(k)]
        if not redo:
            return outs
        longer = dataclasses.replace(sampling, n=1, max_tokens=2 * sampling.max_tokens)
        suffix = f":{what}" if what else ""
        seeds = [
            request_seed(self.ctx.seed, f"{self.ctx.name}:{rows[i]['id']}{suffix}:retry:{k}") for i, k in redo
        ]
        again = self._chat([conversations[i] for i, _ in redo], longer, seeds)
        for (i, k), o in zip(redo, again, strict=True):
            out = outs[i]
            reasons = list(out.finish_reasons) + [None] * (len(out.texts) - len(out.finish_reasons))
            out.texts[k], reasons[k] = o.texts[0], o.finish_reason(0)
            out.finish_reasons = reasons
            out.retried.append(k)
        self.retries += len(redo)
        return outs

    def _chat(self, conversations, sampling, seeds):
        outs = self.engine.chat(conversations, sampling, seeds)
        for out in outs:
            self.tokens_in += out.prompt_tokens
            self.tokens_out += out.completion_tokens
        return outs

    def reject_incomplete(self, row: dict, out, k: int = 0, what: str = "") -> bool:
        """Reject `row` as truncated when sample k of `out` did not end by itself; True if it did so."""
        if out.complete(k):
            return False
        label = f"{what}: " if what else ""
        self.reject(row, f"truncated: {label}finish_reason {out.finish_reason(k)!r}", raw=out.texts[k])
        return True


def render(template: str, **values) -> str:
    """Render a jinja template from rubrics/ (path relative to it) with strict undefined names."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(RUBRICS)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(template).render(**values)


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
