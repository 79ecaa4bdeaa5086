"""Run a spec: read -> stages -> export, as Ray Data over shards, resumable. The one package of the
pipeline that knows Ray; its modules, in the order a run uses them:

    planning.py       Steps, their fingerprints, stale stage dirs removed; row stages into segments
    shards.py         the shard file: a header line of stats, then rows (kept and rejected)
    read.py           step 0: the input files cut into shards
    row_stages.py     a segment of consecutive row stages as one Ray Data pipeline (driver side)
    corpus_stages.py  a corpus stage: all rows in one task, or map -> combine -> apply (driver side)
    ray_plumbing.py   start or join Ray; the Ray Data pipelines with each stage's CPUs, GPUs, memory
    workers.py        what runs inside Ray workers (pickled by module path)
    execute.py        a stage on rows with no row lost (Ray-free; workers and the driver call it)
    ledger.py         _SUCCESS and totals, rejected/, manifest.json
    budget.py         BudgetGuard: what the run dir has spent, checked between shards
    runner.py         Runner: the steps in order, resumed, under the budget
    command.py        `alignfactory run` / `python -m alignfactory.run`: arguments, console, exit code

    runs/<name>/stages/00-read/shard-00000.jsonl   first line {"_shard": stats}, then rows (kept and rejected)
    runs/<name>/stages/<i>-<stage>/_FINGERPRINT     hash of params, templates, model, sampling, seed, input fp
    runs/<name>/stages/<i>-<stage>/_SUCCESS         all shards of the stage written, with totals

Consecutive row stages form one segment: one Ray Data pipeline from_items(shards) -> map_batches
per stage (LLM stages in actor pools, CPU stages as tasks). A shard travels as one item: the stage
it starts at reads its rows from the shard file, each stage's worker writes its output shard itself
(atomically) and passes its kept rows on; the driver gets stats, never rows, and keeps the ledger.
A kill -9 loses only the shards in flight; a re-run sends only the shards not yet written.
Corpus stages (map -> combine -> apply, or all rows in one task) are described in corpus_stages.py.
`python -m alignfactory.run spec.yaml` is what `ray job submit` runs.
"""

from alignfactory.run.command import main
from alignfactory.run.execute import account, apply_stage, build_stage, run_on_shard
from alignfactory.run.ledger import code_version
from alignfactory.run.planning import Step, plan, prepare, segments
from alignfactory.run.ray_plumbing import actor_pool
from alignfactory.run.runner import Runner
from alignfactory.run.shards import SHARD_GLOB, counts, kept, read_shard, write_shard
from alignfactory.run.workers import (
    CorpusWorker,
    StageWorker,
    corpus_stage,
    load_plan,
    run_corpus_task,
    run_task_stage,
    run_whole,
    summary_path,
    write_plan,
)
from alignfactory.spec import SpecError

__all__ = [
    "SHARD_GLOB",
    "CorpusWorker",
    "Runner",
    "SpecError",
    "StageWorker",
    "Step",
    "account",
    "actor_pool",
    "apply_stage",
    "build_stage",
    "code_version",
    "corpus_stage",
    "counts",
    "kept",
    "load_plan",
    "main",
    "plan",
    "prepare",
    "read_shard",
    "run_corpus_task",
    "run_on_shard",
    "run_task_stage",
    "run_whole",
    "segments",
    "summary_path",
    "write_plan",
    "write_shard",
]
