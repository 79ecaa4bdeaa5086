"""The driver's side of Ray: start or join it, and build the Ray Data pipelines that send shards to
the callables in workers.py with the CPUs, GPUs and memory each stage asks for (Step.memory).
Ray is imported inside the functions, so importing the runner starts nothing heavy."""

from __future__ import annotations

import logging
import os

from alignfactory.run.planning import Step
from alignfactory.run.workers import CorpusWorker, StageWorker, run_corpus_task, run_task_stage
from alignfactory.stages.base import StageContext


def ensure_ray() -> None:
    import ray

    from alignfactory.console import route_worker_output

    if not ray.is_initialized():
        # RAY_ADDRESS (set by `ray job submit`, or by the user) joins a cluster; else Ray starts here.
        # Workers reach the run dir's store as the driver does: a Ray started here gets the driver's
        # storage settings and credentials; a joined cluster's workers get the settings (endpoints)
        # and use the nodes' own credentials; a submitted job's workers share its environment.
        from alignfactory.storage import worker_env

        env = (
            {}
            if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
            else worker_env(not os.environ.get("RAY_ADDRESS"))
        )
        runtime_env = {"env_vars": env} if env else None
        ray.init(log_to_driver=True, logging_level=logging.WARNING, runtime_env=runtime_env)
        ctx = ray.data.DataContext.get_current()
        # Ray Data's own multi-line progress dump: off unless asked for (alignfactory run --ray-progress)
        bars = os.environ.get("ALIGNFACTORY_PROGRESS", "0") == "1"
        ctx.enable_progress_bars = ctx.enable_operator_progress_bars = bars
        ctx.print_on_execution_start = bars
        # workers' output and Ray Data's log -> <run>/run.log unless -v (the CLI attaches the file)
        route_worker_output(verbose=os.environ.get("ALIGNFACTORY_VERBOSE", "0") == "1")


def actor_pool(size: int):
    """A fixed pool whose actors each hold one shard at a time. Ray Data's default queues several
    shards on an actor that is ready first; with few shards (a small run: 2 shards, 2 actors) one actor
    got them all, worked through them in turn, and the other was dropped as idle."""
    import ray

    return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1)


def row_dataset(items: list[dict], seg: list[Step], tag: int):
    """One segment of row stages: from_items(shards) -> map_batches per stage (LLM stages in actor
    pools, CPU stages as tasks), one shard per batch; each stage's workers write its shards (tag: the
    driver's pid, naming their temp files)."""
    import ray

    ensure_ray()
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    for step in seg:
        res = step.spec.resources
        out = {"dir": str(step.dir), "tag": tag, "last": step is seg[-1]}
        args = (step.name, step.params.model_dump(mode="json"), step.ctx, out)
        remote = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "memory": step.memory.bytes}
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


def corpus_dataset(step: Step, items: list[dict], ctx: StageContext, phase: str, plan_path: str, tag: int):
    """One phase ("summarize" or "apply") of a distributed corpus stage over input shard paths; the
    workers write the phase's files (temp files named by tag, the driver's pid)."""
    import ray

    ensure_ray()
    res = step.spec.resources
    args = (step.name, step.params.model_dump(mode="json"), ctx, phase, plan_path, tag)
    remote = {
        "num_cpus": res.num_cpus,
        "memory": (step.memory if phase == "summarize" else step.apply_memory).bytes,
    }
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
