"""The driver's side of a corpus stage (one that sees all rows, e.g. dedup, select, export).

A distributed corpus stage (CorpusStage, e.g. dedup) runs map -> combine -> apply: summarize per
input shard on Ray Data (tasks, or actors for stages that embed) into <stage dir>/_SUMMARY-<i>.pkl,
the small summaries meet in the driver for combine, whose plan is kept in <stage dir>/_PLAN.pkl,
then apply per shard on Ray makes output shard i for input shard i (parsing only the rows the plan
touches, where the stage says which: CorpusStage.touched), written by the worker; the driver never
holds the rows. Other corpus stages (pairs, export) get all rows in one Ray task, which reads the
input shards and writes its output re-sharded.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from alignfactory.progress import Progress
from alignfactory.run import workers
from alignfactory.run.budget import BudgetGuard
from alignfactory.run.execute import build_stage
from alignfactory.run.ledger import succeed, totals
from alignfactory.run.planning import Step
from alignfactory.run.ray_plumbing import corpus_dataset, ensure_ray
from alignfactory.run.shards import SHARD_GLOB, check_written, read_header
from alignfactory.run.workers import summary_path

log = logging.getLogger("alignfactory")


class SummaryFiles(Sequence):
    """The shards' _SUMMARY-<i>.pkl in shard order; item i is shard i's summary, read from its file
    on each access (nothing is kept but each record's small fields: seconds, kept_lines)."""

    def __init__(self, paths: list[Path]):
        self.paths, self.small = paths, [None] * len(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        record = pickle.loads(self.paths[i].read_bytes())
        self.small[i] = {k: record[k] for k in ("seconds", "kept_lines")}
        return record["summary"]

    def field(self, name: str) -> list:
        """One small field of every record, in shard order (reading the files combine did not)."""
        for i, got in enumerate(self.small):
            if got is None:
                self[i]
        return [got[name] for got in self.small]


def is_distributed(step: Step) -> bool:
    return getattr(step.cls, "distributed", False)


def run_whole(
    step: Step, source: Path, root: Path, shard_size: int, progress: Progress, guard: BudgetGuard
) -> None:
    """All rows at once, in one Ray task that reads the input shards and writes the output re-sharded
    (workers.run_whole); export writes the run's datasets from there too. source: the previous
    step's dir; root: the run dir (the stage's ctx.run_dir)."""
    for stale in step.dir.glob(SHARD_GLOB):
        stale.unlink()
    sources = sorted(source.glob(SHARD_GLOB))
    n = sum(read_header(p)["rows_out"] for p in sources)
    args = (step.name, step.params.model_dump(mode="json"), replace(step.ctx, run_dir=root))
    args += ([str(p) for p in sources], str(step.dir), shard_size, os.getpid())
    log.info("%s: %d rows (corpus stage)", step.name, n)
    progress.start(step.name, n, 1, llm=step.cls.uses_llm)
    import ray

    ensure_ray()
    res = step.spec.resources
    task = ray.remote(num_cpus=res.num_cpus, num_gpus=res.num_gpus, memory=step.memory.bytes)
    stats = ray.get(task(workers.run_whole).remote(*args))
    check_written(step.dir / "shard-00000.jsonl", stats)
    guard.add(step.index, stats)
    progress.update(step.name, n, stats.get("tokens_out", 0))
    progress.finish(step.name)
    succeed(step, totals(step))


def run_distributed(step: Step, source: Path, root: Path, progress: Progress) -> None:
    """summarize per input shard (Ray) -> combine (driver, summaries only) -> _PLAN.pkl -> apply
    per shard (Ray) -> output shard i for input shard i. A re-run after a kill reuses the plan
    and the output shards already written."""
    inputs = sorted(source.glob(SHARD_GLOB))
    items = [{"shard": i, "path": str(p), "out": str(step.dir / p.name)} for i, p in enumerate(inputs)]
    params = step.params.model_dump(mode="json")
    ctx = replace(step.ctx, run_dir=root)
    plan_path = step.dir / "_PLAN.pkl"
    if not plan_path.exists():
        # summaries are files, so a kill here loses only the shards in flight
        todo = [it for it in items if not summary_path(plan_path, it["shard"]).exists()]
        log.info("%s: summarizing %d of %d shards", step.name, len(todo), len(items))
        if todo:
            for _ in corpus_dataset(step, todo, ctx, "summarize", str(plan_path), os.getpid()).iter_rows():
                pass  # each worker writes its shard's summary file
        summaries = SummaryFiles([summary_path(plan_path, it["shard"]) for it in items])
        t0 = time.perf_counter()
        stage = build_stage(step.name, params, ctx)
        plan = stage.combine(summaries if stage.streams_summaries else list(summaries))
        record = {
            "plan": plan,
            "summarize_seconds": summaries.field("seconds"),
            "combine_seconds": time.perf_counter() - t0,
            "kept_lines": summaries.field("kept_lines"),
        }
        workers.write_plan(plan_path, record)
        del plan, record
        for it in items:
            summary_path(plan_path, it["shard"]).unlink()
        log.info("%s: combined in %.1f s", step.name, time.perf_counter() - t0)
    todo = [it for it in items if not (step.dir / inputs[it["shard"]].name).exists()]
    if todo:
        log.info("%s: %d shards to apply", step.name, len(todo))
        ds = corpus_dataset(step, todo, ctx, "apply", str(plan_path), os.getpid())
        progress.start(step.name, None, len(todo), llm=step.cls.uses_llm)
        for out in ds.iter_rows():  # each worker wrote its output shard; the driver gets its stats
            stats = json.loads(out["payload"])
            check_written(step.dir / inputs[int(out["shard"])].name, stats)
            progress.update(step.name, stats["rows_in"])
        progress.finish(step.name)
    succeed(step, totals(step))
