"""What runs inside Ray: the map_batches callables and task functions the runner sends to workers.
Ray pickles them by module path, so each stays at the top level of this module.

Row stages: StageWorker (an actor for LLM stages: the engine loads once) or run_task_stage (a task),
one item = one shard: where its rows are, then its kept rows between stages and each stage's stats;
each stage writes its own output shard. Corpus stages: run_whole (all rows in one task), and CorpusWorker / run_corpus_task for a distributed corpus stage (map -> combine ->
apply), one item = one input shard read from its file here (the driver sends paths, not rows).
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

from alignfactory import io
from alignfactory.run.execute import account, build_stage, run_on_shard
from alignfactory.run.shards import counts, kept, read_shard, write_shard
from alignfactory.stages.base import StageContext
from alignfactory.storage import location, stamp

# ---- row stages -----------------------------------------------------------------------------------


class StageWorker:
    """map_batches callable: one item = one shard; stages before the shard's start pass it through.
    The stage where the shard starts reads its rows from item["source"]; each stage writes its own
    output shard to out["dir"] (atomically, temp named by out["tag"], the driver's pid) and sends
    on only its kept rows to the next stage and its stats to the driver: rows never reach the driver.
    out: {"dir": the stage dir, "tag": the driver's pid, "last": the segment's last stage}."""

    def __init__(self, name: str, params: dict, ctx: StageContext, out: dict):
        t0 = time.perf_counter()
        self.index, self.out = ctx.index, out
        self.stage = build_stage(name, params, ctx)
        self.load_seconds = round(
            time.perf_counter() - t0, 3
        )  # stage build (an LLM's engine: first use), reported once
        self.where = _worker_location()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        payloads = []
        for shard, start, payload in zip(batch["shard"], batch["start"], batch["payload"], strict=True):
            item = json.loads(payload)
            if int(start) <= self.index:
                rows = (
                    kept(read_shard(location(item["source"]))[0])
                    if int(start) == self.index
                    else item["rows"]
                )
                out, stats = run_on_shard(self.stage, rows)
                # an LLM stage loads its engine on first use, inside a shard's run: that time is load
                lazy, self.stage.load_seconds = getattr(self.stage, "load_seconds", 0.0), 0.0
                stats["seconds"] = round(max(stats["seconds"] - lazy, 0.0), 3)
                stats |= {"worker": self.where, "load_seconds": round(self.load_seconds + lazy, 3)}
                self.load_seconds = 0.0
                write_shard(location(self.out["dir"]) / str(shard), out, stats, self.out["tag"])
                item["outputs"][str(self.index)] = stats
                item["rows"] = [] if self.out["last"] else kept(out)
            payloads.append(json.dumps(item, ensure_ascii=False).encode())
        return {"shard": batch["shard"], "start": batch["start"], "payload": np.array(payloads, dtype=object)}


def _worker_location() -> dict:
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        node = None
    return {"node": node, "pid": os.getpid()}


def run_task_stage(batch: dict, name: str, params: dict, ctx: StageContext, out: dict) -> dict:
    return StageWorker(name, params, ctx, out)(batch)


# ---- corpus stages --------------------------------------------------------------------------------


def run_whole(
    name: str, params: dict, ctx: StageContext, sources: list[str], out_dir: str, shard_size: int, tag=None
) -> dict:
    """A corpus stage on all rows at once (a Ray task): reads the kept rows of the input shards at
    sources, writes its output re-sharded into out_dir (full shards of kept rows; the rejected ones
    ride in shard 0, for rejected/ and the counts) and returns the stage's stats."""
    rows = [r for p in sources for r in kept(read_shard(location(p))[0])]
    out, stats = run_on_shard(build_stage(name, params, ctx), rows)
    good, dropped = kept(out), [r for r in out if r.get("reject")]
    for j in range(0, max(len(good), 1), shard_size):
        part = good[j : j + shard_size] + (dropped if j == 0 else [])
        header = {**counts(part, 0), "tokens_in": 0, "tokens_out": 0, "seconds": 0.0}
        if j == 0:  # whole-stage counters live on the first shard so totals() adds up
            header |= {k: stats[k] for k in ("rows_in", "tokens_in", "tokens_out", "seconds")}
        write_shard(location(out_dir) / f"shard-{j // shard_size:05d}.jsonl", part, header, tag)
    return stats


# A distributed corpus stage is built once per Ray worker process (tasks reuse their processes), so
# what it loads lazily (an embedder, a benchmark index) is loaded once per process, not per shard.
_CORPUS_STAGES: dict[str, object] = {}
_PLANS: dict[tuple, object] = {}


def corpus_stage(name: str, params: dict, ctx: StageContext):
    key = json.dumps([name, params, ctx.index, str(ctx.run_dir)], sort_keys=True, default=str)
    if key not in _CORPUS_STAGES:
        _CORPUS_STAGES.clear()
        _CORPUS_STAGES[key] = build_stage(name, params, ctx)
    return _CORPUS_STAGES[key]


def load_plan(path: Path) -> dict:
    """_PLAN.pkl: {"plan": combine()'s result, "summarize_seconds": [per shard], "combine_seconds",
    "parts": True (write_plan: kept_lines and plan["shards"] are in the _PLAN-<i>.pkl files), or
    "kept_lines": [per shard, (n,) int32 line numbers of its kept rows]}, read once per process."""
    key = (str(path), stamp(path))
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = pickle.loads(path.read_bytes())
    return _PLANS[key]


def part_path(plan_path: Path, shard: int) -> Path:
    return plan_path.with_name(f"_PLAN-{shard:05d}.pkl")


def write_plan(plan_path: Path, record: dict) -> None:
    """_PLAN.pkl plus a _PLAN-<i>.pkl per shard holding what only shard i's apply reads: its kept
    line numbers and, where the plan is a dict with a "shards" dict (dedup, decontaminate, select),
    plan["shards"][i]. An apply worker then loads its shard's part, not the whole plan (select's is
    ~45 B a row: ~450 MB at 10M rows, in every worker). The parts are written first: _PLAN.pkl, last,
    says that all of them are there."""
    plan = record["plan"]
    split = isinstance(plan, dict) and isinstance(plan.get("shards"), dict)
    for shard, lines in enumerate(record["kept_lines"]):
        part = {"kept_lines": lines, "shard": plan["shards"].get(shard) if split else None}
        io.write_atomic(part_path(plan_path, shard), pickle.dumps(part, protocol=5))
    head = record | {"plan": plan | {"shards": None} if split else plan, "kept_lines": None}
    io.write_atomic(plan_path, pickle.dumps(head | {"parts": True, "split": split}, protocol=5))


def shard_plan(plan_path: Path, shard: int) -> tuple[dict, object, object]:
    """(_PLAN.pkl's record, the plan as shard `shard`'s apply sees it, its kept line numbers)."""
    meta = load_plan(plan_path)
    if not meta.get("parts"):  # one file (written before the parts, or by hand)
        lines = meta["kept_lines"][shard] if meta.get("kept_lines") is not None else None
        return meta, meta["plan"], lines
    part = pickle.loads(part_path(plan_path, shard).read_bytes())
    plan = meta["plan"]
    if meta["split"]:
        plan = plan | {"shards": {} if part["shard"] is None else {shard: part["shard"]}}
    return meta, plan, part["kept_lines"]


class CorpusWorker:
    """map_batches callable for a distributed corpus stage; one item = one input shard, read from
    its file here (the driver sends paths, not rows). phase "summarize" writes the shard's summary
    file; phase "apply" writes the shard's output file (item "out") and returns its stats. Temp files
    are named by tag (the driver's pid)."""

    def __init__(
        self, name: str, params: dict, ctx: StageContext, phase: str, plan_path: str, tag: int | None = None
    ):
        self.stage = corpus_stage(name, params, ctx)
        self.phase, self.plan_path, self.tag = phase, plan_path, tag
        self.where = _worker_location()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = []
        for shard, path, target in zip(batch["shard"], batch["path"], batch["out"], strict=True):
            shard = int(shard)
            t0 = time.perf_counter()
            if self.phase == "summarize":  # -> <stage dir>/_SUMMARY-<shard>.pkl; the driver reads the files
                rows = read_shard(location(path))[0]
                lines = np.array([i for i, r in enumerate(rows) if not r.get("reject")], dtype=np.int32)
                summary = self.stage.summarize([rows[i] for i in lines], shard)
                record = {"summary": summary, "seconds": time.perf_counter() - t0, "kept_lines": lines}
                data = pickle.dumps(record, protocol=5)
                io.write_atomic(summary_path(location(self.plan_path), shard), data, self.tag)
                out.append(b"")
                continue
            meta, plan, lines = shard_plan(location(self.plan_path), shard)
            touched = self.stage.touched(plan, shard)
            if touched is None or lines is None:  # (a plan from before kept_lines)
                rows = kept(read_shard(location(path))[0])
                body = account(self.stage, rows, self.stage.apply(rows, plan, shard))
                stats = counts(body, len(rows))
            else:
                body, stats = self.apply_sparse(location(path), lines, touched, plan, shard)
            # the shard's own seconds: apply + its summarize (+ the combine, counted on shard 0)
            seconds = time.perf_counter() - t0 + meta["summarize_seconds"][shard]
            seconds += meta["combine_seconds"] if shard == 0 else 0.0
            stats |= {"tokens_in": 0, "tokens_out": 0, "seconds": round(seconds, 3), "worker": self.where}
            # the output shard's bytes (rows already bytes stay as they are), written here
            data = b"".join(
                r if isinstance(r, bytes) else io.jsonl_bytes([r]) for r in [{"_shard": stats}, *body]
            )
            io.write_atomic(location(target), data, self.tag)
            out.append(json.dumps(stats).encode())
        return {"shard": batch["shard"], "payload": np.array(out, dtype=object)}

    def apply_sparse(self, path: Path, kept_lines, touched: list[int], plan, shard: int):
        """apply on the touched rows only (CorpusStage.touched): the shard's kept rows in order, each
        touched row as a dict and every other row as its input line's bytes, and the counts."""
        lines = path.read_bytes().split(b"\n")[1:]  # line 0 is the shard header; JSON lines hold no raw \n
        body: list = [lines[i] + b"\n" for i in kept_lines.tolist()]
        rows = {pos: json.loads(body[pos]) for pos in touched}
        self.stage.apply(rows, plan, shard)  # changes the rows in place
        for pos, row in rows.items():
            body[pos] = row
        rejected = sum(1 for r in rows.values() if r.get("reject"))
        return body, {"rows_in": len(body), "rows_out": len(body) - rejected, "rejected": rejected}


def summary_path(plan_path: Path, shard: int) -> Path:
    return plan_path.with_name(f"_SUMMARY-{shard:05d}.pkl")


def run_corpus_task(batch: dict, name: str, params: dict, ctx: StageContext, phase: str, plan_path, tag=None):
    return CorpusWorker(name, params, ctx, phase, plan_path, tag)(batch)
