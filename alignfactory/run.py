"""Run a spec: read -> stages -> export, as Ray Data over shards, resumable. The only module that knows Ray.

    runs/<name>/stages/00-read/shard-00000.jsonl   first line {"_shard": stats}, then rows (kept and rejected)
    runs/<name>/stages/<i>-<stage>/_FINGERPRINT     hash of params, templates, model, sampling, seed, input fp
    runs/<name>/stages/<i>-<stage>/_SUCCESS         all shards of the stage written, with totals

Consecutive row stages form one segment: one Ray Data pipeline from_items(shards) -> map_batches
per stage (LLM stages in actor pools, CPU stages as tasks). A shard travels as one item carrying
its rows and every stage's output; the driver writes each finished shard's outputs atomically, so
a kill -9 loses only the shards in flight and a re-run sends only the shards not yet written.
A distributed corpus stage (CorpusStage, e.g. dedup) runs map -> combine -> apply: summarize per
input shard on Ray Data (tasks, or actors for stages that embed) into <stage dir>/_SUMMARY-<i>.pkl,
the small summaries meet in the driver for combine, whose plan is kept in <stage dir>/_PLAN.pkl,
then apply per shard on Ray makes output shard i for input shard i (parsing only the rows the plan
touches, where the stage says which: CorpusStage.touched); the driver never holds the rows. Other
corpus stages get all rows in one Ray task (or the driver, for export) and their output is
re-sharded.
`python -m alignfactory.run spec.yaml` is what `ray job submit` runs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel

from alignfactory import __version__, cost, io, registry
from alignfactory.progress import Progress, Silent
from alignfactory.spec import PipelineSpec, SpecError, StageSpec
from alignfactory.stages.base import StageContext, fingerprint

log = logging.getLogger("alignfactory")
SHARD_GLOB = "shard-*.jsonl"


@dataclass
class Step:
    index: int
    name: str
    spec: StageSpec | None  # None for read
    params: BaseModel | None
    ctx: StageContext
    fingerprint: str
    dir: Path

    @property
    def cls(self) -> type:
        return registry.resolve(self.name)

    @property
    def done(self) -> bool:
        return (self.dir / "_SUCCESS").exists()


# ---- shards ---------------------------------------------------------------------------------------


def write_shard(path: Path, rows: list[dict], stats: dict) -> None:
    io.write_atomic(path, io.jsonl_bytes([{"_shard": stats}] + rows))


def read_shard(path: Path) -> tuple[list[dict], dict]:
    lines = io.read_jsonl(path)
    return lines[1:], lines[0]["_shard"]


def kept(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r.get("reject")]


def counts(rows: list[dict], rows_in: int) -> dict:
    """A shard header's row counts: rows_out kept, the rest rejected."""
    good = len(kept(rows))
    return {"rows_in": rows_in, "rows_out": good, "rejected": len(rows) - good}


# ---- planning -------------------------------------------------------------------------------------


def plan(spec: PipelineSpec, root: Path) -> list[Step]:
    """Steps with fingerprints chained through their inputs; nothing heavy is built here."""
    inputs = io.expand_paths(spec.input.patterns)
    identity = [(str(p), *_file_identity(p)) for p in inputs]
    read_fp = fingerprint(["read", identity, spec.limit, spec.shard_size, spec.input.max_line_bytes])
    steps = [
        Step(0, "read", None, None, StageContext("read", 0, spec.seed), read_fp, root / "stages" / "00-read")
    ]
    for i, stage in enumerate(spec.stages, 1):
        cls = registry.resolve(stage.name)
        params = spec.stage_params(i - 1)
        model = stage.model or spec.model
        sampling = (stage.sampling or spec.sampling).build(spec.seed)
        short = stage.name.rsplit(":", 1)[-1].lower()
        ctx = StageContext(short, i, spec.seed, model, sampling, stage.resources.batch_size)
        parts = {
            "stage": stage.name,
            "params": params.model_dump(mode="json"),
            "templates": [p.read_text("utf-8") for p in cls.template_files(params)],
            "seed": spec.seed,
            "input": steps[-1].fingerprint,
        }
        if cls.output_constraints(params):  # structured-output shapes it asks for
            parts["constraints"] = [c.to_dict() for c in cls.output_constraints(params)]
        if cls.data_files(params):  # files a stage reads (benchmarks): their identity
            parts["data_files"] = [(str(p), *_file_identity(Path(p))) for p in cls.data_files(params)]
        if cls.uses_llm:
            from alignfactory.llm import resolve_backend

            ctx.model = model.model_copy(update={"backend": resolve_backend(model)})
            parts |= {"model": ctx.model.identity(), "sampling": sampling.to_dict()}
        steps.append(
            Step(i, stage.name, stage, params, ctx, fingerprint(parts), root / "stages" / f"{i:02d}-{short}")
        )
    return steps


def _file_identity(path: Path) -> tuple:
    if path.is_dir():
        return tuple(
            sorted((str(p.relative_to(path)), *_file_identity(p)) for p in path.rglob("*") if p.is_file())
        )
    st = path.stat()
    return (st.st_size, st.st_mtime_ns)


def prepare(steps: list[Step]) -> None:
    """A stage dir whose fingerprint differs from the plan's holds stale output: remove it."""
    for step in steps:
        marker = step.dir / "_FINGERPRINT"
        if step.dir.exists() and (not marker.exists() or marker.read_text().strip() != step.fingerprint):
            log.info("%s: inputs or settings changed; discarding %s", step.name, step.dir)
            shutil.rmtree(step.dir)
        step.dir.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            io.write_atomic(marker, step.fingerprint.encode())


def segments(steps: list[Step]) -> list[list[Step]]:
    """Consecutive row stages run as one streaming pipeline; each corpus stage runs alone."""
    out: list[list[Step]] = []
    for step in steps[1:]:
        if step.cls.kind == "row" and out and out[-1][-1].cls.kind == "row":
            out[-1].append(step)
        else:
            out.append([step])
    return out


# ---- executing a stage on rows (inside Ray workers) --------------------------------------------


def apply_stage(stage, rows: list[dict]) -> list[dict]:
    """stage(rows), with no row lost: an exception is isolated to the rows that cause it, and an
    input row that neither comes back nor parents an output row is rejected as dropped."""
    from alignfactory.llm.base import EngineError

    try:
        out = stage(rows)
    except EngineError:
        raise
    except Exception as e:
        if len(rows) == 1:
            return [stage.reject(rows[0], f"stage_error: {type(e).__name__}: {e}")]
        log.warning("%s raised %s on a batch of %d; retrying row by row", stage.ctx.name, e, len(rows))
        out = [r for row in rows for r in apply_stage(stage, [row])]
    return account(stage, rows, out)


def account(stage, rows: list[dict], out: list[dict]) -> list[dict]:
    """Reject, as dropped, every input row that neither comes back nor parents an output row."""
    # Identical rows share an id, so count: each input needs an output row of its id, or a child.
    parents = {p for r in out for p in r["lineage"]["parents"]}
    missing = Counter(r["id"] for r in rows) - Counter(r["id"] for r in out)
    returned = {id(r) for r in out}
    for row in rows:
        if row["id"] not in parents and missing[row["id"]] > 0 and id(row) not in returned:
            missing[row["id"]] -= 1
            out.append(stage.reject(row, "dropped_by_stage"))
    return out


def run_on_shard(stage, rows: list[dict]) -> tuple[list[dict], dict]:
    """The whole shard in one stage call: LLM engines micro-batch it themselves (resources.batch_size)
    after sorting by length, and sandbox stages run all its jobs in one pool call."""
    t0, tin, tout = time.perf_counter(), stage.tokens_in, stage.tokens_out
    out = apply_stage(stage, rows)
    stats = {
        **counts(out, len(rows)),
        "tokens_in": stage.tokens_in - tin,
        "tokens_out": stage.tokens_out - tout,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return out, stats


def build_stage(name: str, params: dict, ctx: StageContext):
    cls = registry.resolve(name)
    return cls(cls.Params.model_validate(params), ctx)


class StageWorker:
    """map_batches callable: one item = one shard; stages before the shard's start pass it through."""

    def __init__(self, name: str, params: dict, ctx: StageContext):
        t0 = time.perf_counter()
        self.index = ctx.index
        self.stage = build_stage(name, params, ctx)
        self.load_seconds = round(time.perf_counter() - t0, 3)  # engine/model load, reported once
        self.where = _worker_location()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        payloads = []
        for start, payload in zip(batch["start"], batch["payload"], strict=True):
            item = json.loads(payload)
            if int(start) <= self.index:
                out, stats = run_on_shard(self.stage, item["rows"])
                stats |= {"worker": self.where, "load_seconds": self.load_seconds}
                self.load_seconds = 0.0
                item["outputs"][str(self.index)] = {"rows": out, "stats": stats}
                item["rows"] = kept(out)
            payloads.append(json.dumps(item, ensure_ascii=False).encode())
        return {"shard": batch["shard"], "start": batch["start"], "payload": np.array(payloads, dtype=object)}


def _worker_location() -> dict:
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        node = None
    return {"node": node, "pid": os.getpid()}


def run_task_stage(batch: dict, name: str, params: dict, ctx: StageContext) -> dict:
    return StageWorker(name, params, ctx)(batch)


def run_corpus(name: str, params: dict, ctx: StageContext, rows: list[dict]) -> tuple[list[dict], dict]:
    return run_on_shard(build_stage(name, params, ctx), rows)


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
    "kept_lines": [per shard, (n,) int32 line numbers of its kept rows]}, read once per process."""
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = pickle.loads(path.read_bytes())
    return _PLANS[key]


class CorpusWorker:
    """map_batches callable for a distributed corpus stage; one item = one input shard, read from
    its file here (the driver sends paths, not rows). phase "summarize" returns the pickled summary;
    phase "apply" returns the shard's output rows and stats for the driver to write."""

    def __init__(self, name: str, params: dict, ctx: StageContext, phase: str, plan_path: str | None = None):
        self.stage = corpus_stage(name, params, ctx)
        self.phase, self.plan_path = phase, plan_path
        self.where = _worker_location()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = []
        for shard, path in zip(batch["shard"], batch["path"], strict=True):
            shard = int(shard)
            t0 = time.perf_counter()
            if self.phase == "summarize":  # -> <stage dir>/_SUMMARY-<shard>.pkl; the driver reads the files
                rows = read_shard(Path(path))[0]
                lines = np.array([i for i, r in enumerate(rows) if not r.get("reject")], dtype=np.int32)
                summary = self.stage.summarize([rows[i] for i in lines], shard)
                record = {"summary": summary, "seconds": time.perf_counter() - t0, "kept_lines": lines}
                io.write_atomic(summary_path(Path(self.plan_path), shard), pickle.dumps(record, protocol=5))
                out.append(b"")
                continue
            meta = load_plan(Path(self.plan_path))
            touched = self.stage.touched(meta["plan"], shard)
            if touched is None or meta.get("kept_lines") is None:  # (a plan from before kept_lines)
                rows = kept(read_shard(Path(path))[0])
                body = account(self.stage, rows, self.stage.apply(rows, meta["plan"], shard))
                stats = counts(body, len(rows))
            else:
                body, stats = self.apply_sparse(
                    Path(path), meta["kept_lines"][shard], touched, meta["plan"], shard
                )
            # the shard's own seconds: apply + its summarize (+ the combine, counted on shard 0)
            seconds = time.perf_counter() - t0 + meta["summarize_seconds"][shard]
            seconds += meta["combine_seconds"] if shard == 0 else 0.0
            stats |= {"tokens_in": 0, "tokens_out": 0, "seconds": round(seconds, 3), "worker": self.where}
            # the output shard's exact bytes (rows already bytes stay so): the driver writes them as they are
            data = b"".join(
                r if isinstance(r, bytes) else io.jsonl_bytes([r]) for r in [{"_shard": stats}, *body]
            )
            out.append(pickle.dumps({"shard_bytes": data, "stats": stats}))
        return {"shard": batch["shard"], "path": batch["path"], "payload": np.array(out, dtype=object)}

    def apply_sparse(self, path: Path, kept_lines, touched: list[int], plan, shard: int):
        """apply on the touched rows only (CorpusStage.touched): the shard's kept rows in order, each
        touched row as a dict and every other row as its input line's bytes, and the counts."""
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")[1:]  # line 0 is the shard header; JSON lines hold no raw \n
        body: list = [lines[i] + b"\n" for i in kept_lines.tolist()]
        rows = {pos: json.loads(body[pos]) for pos in touched}
        self.stage.apply(rows, plan, shard)  # changes the rows in place
        for pos, row in rows.items():
            body[pos] = row
        rejected = sum(1 for r in rows.values() if r.get("reject"))
        return body, {"rows_in": len(body), "rows_out": len(body) - rejected, "rejected": rejected}


def summary_path(plan_path: Path, shard: int) -> Path:
    return plan_path.with_name(f"_SUMMARY-{shard:05d}.pkl")


def run_corpus_task(batch: dict, name: str, params: dict, ctx: StageContext, phase: str, plan_path=None):
    return CorpusWorker(name, params, ctx, phase, plan_path)(batch)


# ---- driver ---------------------------------------------------------------------------------------


class Runner:
    def __init__(
        self,
        spec: PipelineSpec,
        spec_path: str | None = None,
        output: str | None = None,
        progress: Progress | None = None,
    ):
        self.spec = spec
        self.spec_path = spec_path
        self.progress = progress or Silent()
        self.root = Path(output or spec.output or Path("runs") / spec.name).resolve()
        self.steps = plan(spec, self.root)

    def run(self) -> dict:
        t0 = time.perf_counter()
        prepare(self.steps)
        # counts what this run dir already spent (earlier runs too); stops between shards when spent
        self.guard = cost.BudgetGuard(self.spec.model_dump(mode="json"), self.root)
        stopped = None
        try:
            self.read()
            self.guard.check()
            for seg in segments(self.steps):
                if all(s.done for s in seg):
                    log.info("%s: finished earlier, reused", ", ".join(s.name for s in seg))
                    continue
                if seg[0].cls.kind == "corpus":
                    self.corpus(seg[0])
                else:
                    self.row_segment(seg)
                self.write_manifest(time.perf_counter() - t0)
                self.guard.check()
        except cost.BudgetExceeded as e:  # clean stop: written shards stay, a re-run resumes from them
            stopped = str(e)
            log.warning("stopped: %s", stopped)
        self.collect_rejected()
        manifest = self.write_manifest(time.perf_counter() - t0, stopped)
        from alignfactory.inspect import dataset_card

        io.write_atomic(self.root / "README.md", dataset_card(self.root).encode("utf-8"))
        log.info("done in %.1f s: %s", time.perf_counter() - t0, self.root)
        return manifest

    # -- read

    def read(self) -> None:
        step = self.steps[0]
        if step.done:
            return
        self.progress.start(step.name)
        paths = io.expand_paths(self.spec.input.patterns)
        totals = {"rows_in": 0, "rows_out": 0, "rejected": 0}
        buf: list[dict] = []
        n_shards = 0

        def flush():
            nonlocal buf, n_shards
            stats = counts(buf, len(buf))
            write_shard(step.dir / f"shard-{n_shards:05d}.jsonl", buf, stats)
            for k in totals:
                totals[k] += stats[k]
            n_shards += 1
            buf = []

        limit = self.spec.limit
        for row in io.read_inputs(paths, self.spec.input.max_line_bytes):
            buf.append(row)
            if len(buf) == self.spec.shard_size:
                flush()
            if limit and totals["rows_in"] + len(buf) >= limit:
                break
        if buf:
            flush()
        self.succeed(step, totals | {"shards": n_shards})
        self.progress.update(step.name, rows=totals["rows_in"], shards=n_shards)
        self.progress.finish(step.name)
        log.info(
            "read: %d rows (%d rejected) into %d shards", totals["rows_in"], totals["rejected"], n_shards
        )

    # -- row stages

    def row_segment(self, seg: list[Step]) -> None:
        first, last = seg[0].index, seg[-1].index
        source = self.steps[first - 1].dir
        items, sizes = [], []  # sizes: rows each item brings to the stage it starts at
        for path in sorted(source.glob(SHARD_GLOB)):
            start = first
            while start <= last and (self.steps[start].dir / path.name).exists():
                start += 1
            if start > last:
                continue
            rows = kept(read_shard(self.steps[start - 1].dir / path.name)[0])
            if not rows:  # nothing left to process: the driver writes the empty outputs itself
                for step in seg[start - first :]:
                    write_shard(step.dir / path.name, [], counts([], 0))
                continue
            payload = {"rows": rows, "outputs": {}}
            sizes.append(len(rows))
            items.append(
                {
                    "shard": path.name,
                    "start": start,
                    "payload": json.dumps(payload, ensure_ascii=False).encode(),
                }
            )
        names = ", ".join(s.name for s in seg)
        if items:
            log.info("%s: %d shards to run", names, len(items))
            for step in seg:  # a stage's total rows are known when all its shards start at it
                mine = [
                    (it["start"], n) for it, n in zip(items, sizes, strict=True) if it["start"] <= step.index
                ]
                known = all(start == step.index for start, _ in mine)
                total = sum(n for _, n in mine) if known else None
                self.progress.start(step.name, total, len(mine), llm=step.cls.uses_llm)
            ds = self.dataset(items, seg)
            for done, out in enumerate(ds.iter_rows(), 1):
                item = json.loads(out["payload"])
                for index, result in sorted(item["outputs"].items(), key=lambda kv: int(kv[0])):
                    step, stats = self.steps[int(index)], result["stats"]
                    write_shard(step.dir / out["shard"], result["rows"], stats)
                    self.guard.add(step.index, stats)
                    self.progress.update(step.name, stats["rows_in"], stats.get("tokens_out", 0))
                log.info("%s: shard %s written (%d/%d)", names, out["shard"], done, len(items))
                self.guard.check()  # between shards: what is written stays, in-flight shards are dropped
            for step in seg:
                self.progress.finish(step.name)
        for step in seg:
            self.succeed(step, self.totals(step))

    def dataset(self, items: list[dict], seg: list[Step]):
        import ray

        self.ensure_ray()
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        for step in seg:
            res = step.spec.resources
            args = (step.name, step.params.model_dump(mode="json"), step.ctx)
            remote = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus}
            if step.cls.uses_llm:  # engines load once per actor
                fn, how = (
                    StageWorker,
                    {
                        "fn_constructor_args": args,
                        "compute": actor_pool(res.concurrency),
                    },
                )
            else:
                fn, how = (
                    run_task_stage,
                    {"fn_args": args, "compute": ray.data.TaskPoolStrategy(size=res.concurrency)},
                )
            ds = ds.map_batches(fn, batch_size=1, batch_format="numpy", **how, **remote)
        return ds

    # -- corpus stages

    def corpus(self, step: Step) -> None:
        if getattr(step.cls, "distributed", False) and not step.cls.in_driver:
            return self.distributed_corpus(step)
        for stale in step.dir.glob(SHARD_GLOB):
            stale.unlink()
        rows = [
            r for p in sorted(self.steps[step.index - 1].dir.glob(SHARD_GLOB)) for r in kept(read_shard(p)[0])
        ]
        params = step.params.model_dump(mode="json")
        ctx = replace(step.ctx, run_dir=self.root)
        log.info("%s: %d rows (corpus stage)", step.name, len(rows))
        self.progress.start(step.name, len(rows), 1, llm=step.cls.uses_llm)
        if step.cls.in_driver:
            out, stats = run_corpus(step.name, params, ctx, rows)
        else:
            import ray

            self.ensure_ray()
            task = ray.remote(num_cpus=step.spec.resources.num_cpus, num_gpus=step.spec.resources.num_gpus)(
                run_corpus
            )
            out, stats = ray.get(task.remote(step.name, params, ctx, rows))
        # Kept rows re-sharded in full shards; the rejected ones ride in shard 0 (for rejected/ and counts).
        good, dropped, size = kept(out), [r for r in out if r.get("reject")], self.spec.shard_size
        for j in range(0, max(len(good), 1), size):
            part = good[j : j + size] + (dropped if j == 0 else [])
            shard_stats = {
                **counts(part, 0),
                "tokens_in": 0,
                "tokens_out": 0,
                "seconds": 0.0,
            }
            if j == 0:  # whole-stage counters live on the first shard so totals() adds up
                shard_stats |= {k: stats[k] for k in ("rows_in", "tokens_in", "tokens_out", "seconds")}
            write_shard(step.dir / f"shard-{j // size:05d}.jsonl", part, shard_stats)
        self.guard.add(step.index, stats)
        self.progress.update(step.name, len(rows), stats.get("tokens_out", 0))
        self.progress.finish(step.name)
        self.succeed(step, self.totals(step))

    def distributed_corpus(self, step: Step) -> None:
        """summarize per input shard (Ray) -> combine (driver, summaries only) -> _PLAN.pkl -> apply
        per shard (Ray) -> output shard i for input shard i. A re-run after a kill reuses the plan
        and the output shards already written."""
        inputs = sorted(self.steps[step.index - 1].dir.glob(SHARD_GLOB))
        items = [{"shard": i, "path": str(p)} for i, p in enumerate(inputs)]
        params = step.params.model_dump(mode="json")
        ctx = replace(step.ctx, run_dir=self.root)
        plan_path = step.dir / "_PLAN.pkl"
        if not plan_path.exists():
            # summaries are files, so a kill here loses only the shards in flight
            todo = [it for it in items if not summary_path(plan_path, it["shard"]).exists()]
            log.info("%s: summarizing %d of %d shards", step.name, len(todo), len(items))
            if todo:
                for _ in self.corpus_dataset(step, todo, ctx, "summarize", str(plan_path)).iter_rows():
                    pass  # each worker writes its shard's summary file
            summaries = [pickle.loads(summary_path(plan_path, it["shard"]).read_bytes()) for it in items]
            t0 = time.perf_counter()
            stage = build_stage(step.name, params, ctx)
            plan = stage.combine([r["summary"] for r in summaries])
            record = {
                "plan": plan,
                "summarize_seconds": [r["seconds"] for r in summaries],
                "combine_seconds": time.perf_counter() - t0,
                "kept_lines": [r["kept_lines"] for r in summaries],
            }
            del summaries
            io.write_atomic(plan_path, pickle.dumps(record, protocol=5))
            del plan, record
            for it in items:
                summary_path(plan_path, it["shard"]).unlink()
            log.info("%s: combined in %.1f s", step.name, time.perf_counter() - t0)
        todo = [it for it in items if not (step.dir / inputs[it["shard"]].name).exists()]
        if todo:
            log.info("%s: %d shards to apply", step.name, len(todo))
            ds = self.corpus_dataset(step, todo, ctx, "apply", str(plan_path))
            self.progress.start(step.name, None, len(todo), llm=step.cls.uses_llm)
            for out in ds.iter_rows():
                result = pickle.loads(out["payload"])
                io.write_atomic(step.dir / inputs[int(out["shard"])].name, result["shard_bytes"])
                self.progress.update(step.name, result["stats"]["rows_in"])
            self.progress.finish(step.name)
        self.succeed(step, self.totals(step))

    def corpus_dataset(self, step: Step, items: list[dict], ctx: StageContext, phase: str, plan_path=None):
        import ray

        self.ensure_ray()
        res = step.spec.resources
        args = (step.name, step.params.model_dump(mode="json"), ctx, phase, plan_path)
        remote = {"num_cpus": res.num_cpus}
        if step.cls.uses_model(step.params) and phase == "summarize":
            # embeddings: the model loads once per actor, on a GPU when resources.num_gpus gives one
            fn = CorpusWorker
            how = {"fn_constructor_args": args, "compute": actor_pool(res.concurrency)}
            remote["num_gpus"] = res.num_gpus
        else:
            fn, how = (
                run_corpus_task,
                {"fn_args": args, "compute": ray.data.TaskPoolStrategy(size=res.concurrency)},
            )
        ds = ray.data.from_items(items, override_num_blocks=max(len(items), 1))
        return ds.map_batches(fn, batch_size=1, batch_format="numpy", **how, **remote)

    # -- bookkeeping

    def totals(self, step: Step) -> dict:
        sums = {
            "rows_in": 0,
            "rows_out": 0,
            "rejected": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "seconds": 0.0,
            "load_seconds": 0.0,  # engine/model construction in workers
            "shards": 0,
        }
        nodes = set()  # Ray node ids that ran shards of this stage
        for path in step.dir.glob(SHARD_GLOB):
            with open(path, encoding="utf-8") as f:
                stats = json.loads(f.readline())["_shard"]
            for k in sums:
                sums[k] += stats.get(k, 1 if k == "shards" else 0)
            if stats.get("worker", {}).get("node"):
                nodes.add(stats["worker"]["node"])
        sums["seconds"] = round(sums["seconds"], 3)
        sums["load_seconds"] = round(sums["load_seconds"], 3)
        if nodes:
            sums["nodes"] = sorted(nodes)
        return sums

    def succeed(self, step: Step, totals: dict) -> None:
        io.write_json_atomic(step.dir / "_SUCCESS", totals)
        log.info("%s: %s", step.name, ", ".join(f"{k}={v}" for k, v in totals.items()))

    def collect_rejected(self) -> None:
        """rejected/<i>-<stage>.jsonl: every dropped row, with its reason, gathered from the shards."""
        out = self.root / "rejected"
        out.mkdir(exist_ok=True)
        for step in self.steps:
            rows = [r for p in sorted(step.dir.glob(SHARD_GLOB)) for r in read_shard(p)[0] if r.get("reject")]
            target = out / f"{step.dir.name}.jsonl"
            if rows:
                io.write_jsonl_atomic(target, rows)
            elif target.exists():
                target.unlink()

    def write_manifest(self, seconds: float, stopped: str | None = None) -> dict:
        manifest = {
            "name": self.spec.name,
            "spec_path": self.spec_path,
            "spec": self.spec.model_dump(mode="json"),
            "code_version": code_version(),
            "seconds": round(seconds, 3),
            "stages": [
                {
                    "index": s.index,
                    "name": s.name,
                    "dir": str(s.dir.relative_to(self.root)),
                    "fingerprint": s.fingerprint,
                    "done": s.done,
                    # not done yet (interrupted, or stopped by its budget): what its shards hold so far
                    **(json.loads((s.dir / "_SUCCESS").read_text()) if s.done else self.totals(s)),
                }
                for s in self.steps
            ],
        }
        manifest["cost"] = cost.summary(manifest, self.root)  # per stage, per SFT row / pair
        from alignfactory.inspect import judge_consistency

        # per judge stage: comparisons judged both ways, agreeing, flipped (ties), unreadable
        manifest["judge_consistency"] = judge_consistency(self.root)
        if stopped:
            manifest["stopped"] = stopped
        io.write_json_atomic(self.root / "manifest.json", manifest)
        return manifest

    def ensure_ray(self) -> None:
        import ray

        if not ray.is_initialized():
            # RAY_ADDRESS (set by `ray job submit`, or by the user) joins a cluster; else Ray starts here.
            ray.init(log_to_driver=True, logging_level=logging.WARNING)
            ctx = ray.data.DataContext.get_current()
            # Ray Data's own multi-line progress dump: off unless asked for (alignfactory run --ray-progress)
            bars = os.environ.get("ALIGNFACTORY_PROGRESS", "0") == "1"
            ctx.enable_progress_bars = ctx.enable_operator_progress_bars = bars
            ctx.print_on_execution_start = bars


def actor_pool(size: int):
    """A fixed pool whose actors each hold one shard at a time. Ray Data's default queues several
    shards on an actor that is ready first; with few shards (a small run: 2 shards, 2 actors) one actor
    got them all, worked through them in turn, and the other was dropped as idle."""
    import ray

    return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1)


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def main(argv: list[str] | None = None) -> int:
    from alignfactory.cli import main as cli_main

    return cli_main(["run", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Runner", "SpecError", "main"]
