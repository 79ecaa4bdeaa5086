"""Distributed corpus stages on a real local Ray cluster: summarize per shard -> combine -> apply per
shard gives the same rows as the plain-list call, and a kill -9 mid-stage (apply, summarize) resumes from
what was saved: the plan, the written shards and summaries."""

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from alignfactory import records, run
from alignfactory.io import read_inputs
from alignfactory.run import Runner
from alignfactory.spec import validate
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.dedup import Dedup
from tests.integration.conftest import (
    assert_held,
    finish_run,
    half_written,
    kill_driver,
    make_stage_dirs,
    pin,
    ray_address,
    start_run,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow

STORY = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle that was sent "
    "fifty years ago by a girl living on the other side of the ocean and decides to answer it"
)
ZH = "请写一篇关于秋天的散文，描写落叶、稻田、远山和傍晚的炊烟，表达对家乡的思念，字数在五百字左右。"


def corpus() -> list[dict]:
    """40 rows, planted across shards of 4: exact copies, near copies (EN words / ZH characters
    changed), and a paraphrase (semantic only)."""
    rows = [
        {"instruction": f"Give one fact about the number {i} and explain why it matters."} for i in range(33)
    ]
    rows[3] = {"instruction": STORY}
    rows[9] = {"instruction": ZH}
    rows[14] = {"instruction": "What is the capital city of France?"}
    rows += [
        {"instruction": STORY.upper()},  # exact after normalization (shard 8)
        {"instruction": STORY.replace("fifty", "sixty")},  # near: one word
        {"instruction": ZH.replace("稻田", "麦田")},  # near: one character pair
        {"instruction": "Tell me the capital city of France."},  # paraphrase
        {"instruction": ZH},  # exact
        {"instruction": STORY.replace("lighthouse keeper", "old fisherman")},  # near: two words
        {"instruction": "Give one fact about the number 5 and explain why it matters."},  # exact
    ]
    return rows


def spec_tree(path: Path, out: Path, stages: list[dict]) -> dict:
    return {
        "name": "corpus",
        "input": {"path": str(path)},
        "output": str(out),
        "shard_size": 4,
        "stages": stages,
    }


STAGES = [
    {"name": "dedup", "resources": {"concurrency": 2, "num_cpus": 0.5}},
    {"name": "dedup", "params": {"method": "minhash"}, "resources": {"concurrency": 2, "num_cpus": 0.5}},
    {"name": "dedup", "params": {"method": "semantic", "threshold": 0.9}, "resources": {"num_cpus": 1}},
]


def outcome(rows: list[dict]) -> list[tuple]:
    return [(r["id"], r["reject"], r["meta"].get("dedup")) for r in rows]


def stage_rows(step_dir: Path) -> list[dict]:
    return [r for p in sorted(step_dir.glob("shard-*.jsonl")) for r in run.read_shard(p)[0]]


def test_distributed_dedup_equals_the_plain_list_call(local_ray, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", corpus())
    Runner(validate(spec_tree(path, tmp_path / "run", STAGES))).run()

    rows = list(read_inputs([path]))
    for i, stage in enumerate(STAGES, 1):
        step_dir = tmp_path / "run" / "stages" / f"{i:02d}-dedup"
        got = stage_rows(step_dir)
        params = Dedup.Params.model_validate(stage.get("params", {}))
        want = Dedup(params, StageContext("dedup", i))(copy.deepcopy(rows))
        assert outcome(got) == outcome(want)  # same rows, same order, same rejects and details
        n_in = len(
            list(
                (tmp_path / "run" / "stages" / f"{i - 1:02d}-{'read' if i == 1 else 'dedup'}").glob(
                    "shard-*.jsonl"
                )
            )
        )
        assert len(list(step_dir.glob("shard-*.jsonl"))) == n_in == 10  # output shard i for input shard i
        assert (step_dir / "_PLAN.pkl").exists()
        rows = run.kept(want)

    by_text = {}
    for i in range(1, 4):
        for r in stage_rows(tmp_path / "run" / "stages" / f"{i:02d}-dedup"):
            if r["reject"]:
                by_text[records.instruction(r)] = (i, r["reject"]["reason"])
    ids = {records.instruction(r): r["id"] for r in read_inputs([path])}
    assert by_text[STORY.upper()] == (1, f"duplicate of {ids[STORY]}")
    assert by_text[ZH][0] == 1  # the exact copy in shard 9 names the first, in shard 2
    assert by_text[STORY.replace("fifty", "sixty")][1].startswith(
        f"duplicate of {ids[STORY]} (minhash jaccard"
    )
    assert by_text[ZH.replace("稻田", "麦田")][0] == 2
    assert by_text["Tell me the capital city of France."][1].startswith(
        f"duplicate of {ids['What is the capital city of France?']} (cosine"
    )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["rejected"] for s in manifest["stages"][1:]][:1] == [3]


# ---- kill -9 during a distributed corpus stage ------------------------------------------------------
#
# At exact moments, not after a wait (FIFO pins, see conftest): one task at a time (concurrency 1) takes
# the 10 shards in order, and a pin stops the writer of shard 2's file (apply's output shard, or its
# summary), with shards 0-1's written; the driver is killed there.


def run_cli(spec: Path, address: str) -> subprocess.Popen:
    # -v: the INFO lines the resume checks read. The driver joins the shared Ray: a kill -9 ends the
    # driver, and Ray ends its job's workers with it (no Ray start per run: ~20 s each here)
    return start_run([str(spec), "-v"], address)


def minhash_spec(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A minhash dedup spec over corpus(), its stage dirs made (see make_stage_dirs).
    Returns (input path, spec path, stage dir)."""
    path = write_jsonl(tmp_path / "in.jsonl", corpus())
    stage = {"name": "dedup", "params": {"method": "minhash"}, "resources": {"concurrency": 1, "num_cpus": 1}}
    tree = spec_tree(path, tmp_path / "run", [stage])
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(tree), "utf-8")
    make_stage_dirs(validate(tree), tmp_path / "run")
    return path, spec, tmp_path / "run" / "stages" / "01-dedup"


def minhash_rows(path: Path) -> list[dict]:
    rows = list(read_inputs([path]))
    return Dedup(Dedup.Params(method="minhash"), StageContext("dedup", 1))(rows)


def kill_at(proc: subprocess.Popen, pinned: Path, before: Path, ray) -> None:
    """Stop the run at its pin on `pinned` (once `before` is written), kill its driver there, and put a
    half-written temp file in the pin's place."""
    fifo = pin(pinned, proc.pid)
    try:
        wait_for(before, proc)
        assert_held(proc, pinned)
    finally:
        kill_driver(proc, ray)  # also when an assertion failed: a pinned writer waits forever
    half_written(fifo)


def test_kill_9_during_apply_resumes_from_the_plan(tmp_path, local_ray):
    address = ray_address(local_ray)
    path, spec, step_dir = minhash_spec(tmp_path)
    kill_at(run_cli(spec, address), step_dir / "shard-00002.jsonl", step_dir / "shard-00001.jsonl", local_ray)
    plan = step_dir / "_PLAN.pkl"
    assert plan.exists() and not (step_dir / "_SUCCESS").exists()
    before = {p.name: p.stat().st_mtime_ns for p in step_dir.glob("shard-*.jsonl")}
    assert sorted(before) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    plan_mtime = plan.stat().st_mtime_ns

    log = finish_run(run_cli(spec, address))
    assert "8 shards to apply" in log and "summarizing" not in log
    assert plan.stat().st_mtime_ns == plan_mtime  # the plan was reused, not recomputed
    after = {p.name: p.stat().st_mtime_ns for p in step_dir.glob("shard-*.jsonl")}
    assert {k: after[k] for k in before} == before and len(after) == 10

    want = minhash_rows(path)
    assert outcome(stage_rows(step_dir)) == outcome(want)
    assert sum(1 for r in want if r["reject"]) == 6  # 3 exact + 3 near copies, none lost or doubled


def test_kill_9_during_summarize_resumes_from_the_summaries_written(tmp_path, local_ray):
    """Each shard's summary is a file: a kill -9 while summarizing loses only the shards in flight."""
    address = ray_address(local_ray)
    path, spec, step_dir = minhash_spec(tmp_path)
    kill_at(
        run_cli(spec, address), step_dir / "_SUMMARY-00002.pkl", step_dir / "_SUMMARY-00001.pkl", local_ray
    )
    done = sorted(p.name for p in step_dir.glob("_SUMMARY-*.pkl"))
    assert done == ["_SUMMARY-00000.pkl", "_SUMMARY-00001.pkl"] and not (step_dir / "_PLAN.pkl").exists()

    log = finish_run(run_cli(spec, address))
    assert "summarizing 8 of 10 shards" in log  # the written summaries were reused
    assert not list(step_dir.glob("_SUMMARY-*.pkl"))  # folded into _PLAN.pkl, then removed
    assert outcome(stage_rows(step_dir)) == outcome(minhash_rows(path))
