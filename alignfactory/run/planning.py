"""Planning: a spec -> Steps (read, then one per stage), each with a fingerprint chained through its
inputs, and the stage dirs made to match them. Nothing heavy is built here.

    runs/<name>/stages/<i>-<stage>/_FINGERPRINT     hash of params, templates, model, sampling, seed, input fp

A stage dir whose _FINGERPRINT differs from the plan's is stale and removed (prepare), so a re-run
redoes a changed stage and those after it; resources (batch size, concurrency, GPUs) are not hashed.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from alignfactory import io, registry, storage
from alignfactory.memory import TASK_BASE, Need, stage_memory, with_shard
from alignfactory.spec import PipelineSpec, StageSpec
from alignfactory.stages.base import StageContext, fingerprint

log = logging.getLogger("alignfactory")


@dataclass
class Step:
    index: int
    name: str
    spec: StageSpec | None  # None for read
    params: BaseModel | None
    ctx: StageContext
    fingerprint: str
    dir: Path
    shard_size: int = 16  # rows per shard (the spec's): a task holds one shard's rows

    @property
    def cls(self) -> type:
        return registry.resolve(self.name)

    @property
    def done(self) -> bool:
        return (self.dir / "_SUCCESS").exists()

    @functools.cached_property
    def memory(self) -> Need:
        """What one of its actors or tasks needs: Ray schedules by it (see memory.py)."""
        if self.spec is None:
            return Need(TASK_BASE, "read: a task without a model")
        return stage_memory(self.cls, self.params, self.ctx.model, self.spec.resources, self.shard_size)

    @functools.cached_property
    def apply_memory(self) -> Need:
        """A distributed corpus stage's apply task: no model, one shard's rows (or resources.memory)."""
        if self.spec is not None and self.spec.resources.memory is not None:
            return self.memory
        return with_shard(Need(TASK_BASE, "apply: a task without a model"), self.shard_size)


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
            Step(
                i,
                stage.name,
                stage,
                params,
                ctx,
                fingerprint(parts),
                root / "stages" / f"{i:02d}-{short}",
                spec.shard_size,
            )
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
    """A stage dir whose fingerprint differs from the plan's holds stale output: remove it. So are the
    temp files (`.<name>.tmp<tag>`) a kill -9 left mid-write: the run holds the lease, so no live
    writer owns one but this driver's (tag: its pid)."""
    for step in steps:
        marker = step.dir / "_FINGERPRINT"
        if step.dir.exists() and (not marker.exists() or marker.read_text().strip() != step.fingerprint):
            log.info("%s: inputs or settings changed; discarding %s", step.name, step.dir)
            storage.remove_tree(step.dir)
        elif step.dir.exists():
            for stale in step.dir.glob(".*.tmp*"):
                if not stale.name.endswith(f".tmp{os.getpid()}"):
                    stale.unlink(missing_ok=True)
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
