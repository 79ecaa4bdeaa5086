"""kill -9 during a run, then re-run: the result equals an uninterrupted run's, nothing lost or doubled.

The moment is exact (a FIFO pin, see conftest): a shard's outputs are written stage by stage,
02-generate/shard-i (by the generate actor) before 03-filter/shard-i (by the filter task), with temp
files named by the driver's pid, so a pin at 03-filter/shard-00002 stops the run with shard 2 generated
but not filtered (the segment resumes that shard at its second stage), the shards filtered before it
written through, and the others in flight."""

import sys
from pathlib import Path

import pytest

from alignfactory.spec import load_spec
from tests.integration.conftest import (
    REPO,
    SHORT_REPLIES,
    assert_each_input_once,
    assert_held,
    exported,
    finish_run,
    half_written,
    input_lines,
    kill_driver,
    make_stage_dirs,
    pin,
    read_jsonl,
    rejected_rows,
    start_run,
    wait_for,
    write_jsonl,
)

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "alignfactory.run", str(REPO / "pipelines" / "sft_quick.yaml")]
N_ROWS = 16


def set_values(input_path: Path) -> list[str]:
    return [
        f"input.path={input_path}",
        "shard_size=2",
        "sampling.max_tokens=24",
        SHORT_REPLIES,
        "stages.2.params.min_chars=1",
    ]


def sets(input_path: Path) -> list[str]:
    return [arg for s in set_values(input_path) for arg in ("--set", s)]


def run_cli(input_path: Path, out: Path, address: str):
    # -v: INFO lines read below. The drivers join one Ray cluster (as `ray job submit` drivers join
    # theirs): a Ray start per run saved; a driver's death ends its job's workers.
    return start_run([*CLI[3:], "--output", str(out), "-v", *sets(input_path)], address)


def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp_path, local_ray):
    address = local_ray.get_runtime_context().gcs_address
    rows = [{"instruction": f"Give a short fact about the number {i}."} for i in range(N_ROWS - 2)]
    rows += [
        {"instruction": "give a SHORT fact about the number 3."},
        {"no_instruction": True},
    ]  # dedup + read rejects
    path = write_jsonl(tmp_path / "in.jsonl", rows)

    finish_run(run_cli(path, tmp_path / "whole", address))
    reference = exported(tmp_path / "whole")

    out = tmp_path / "killed"
    make_stage_dirs(load_spec(CLI[3], set_values(path), output=str(out)), out)
    generated, filtered = out / "stages" / "02-generate", out / "stages" / "03-filter"
    proc = run_cli(path, out, address)
    fifo = pin(filtered / "shard-00002.jsonl", proc.pid)
    try:
        wait_for(generated / "shard-00002.jsonl", proc)  # written right before the pinned file
        assert_held(proc, filtered / "shard-00002.jsonl")
    finally:
        kill_driver(proc, local_ray)  # also when an assertion failed: a pinned writer waits forever
    half_written(fifo)
    total = len(list((out / "stages" / "01-dedup").glob("shard-*.jsonl")))  # one per read shard (8 of 2 rows)
    shards_before = {p.name: p.stat().st_mtime_ns for p in generated.glob("shard-*.jsonl")}
    # a shard counts as done when every stage of its segment (generate, filter) wrote it
    whole = {p.name for p in filtered.glob("shard-*.jsonl")}
    assert total == 8 and "shard-00002.jsonl" in shards_before and "shard-00002.jsonl" not in whole
    assert whole < set(shards_before)  # each shard written through but shard 2, which stopped between
    assert not (generated / "_SUCCESS").exists() and not (filtered / "_SUCCESS").exists()

    log = finish_run(run_cli(path, out, address))
    assert f"{total - len(whole)} shards to run" in log  # only shards not finished before the kill were sent
    assert {
        p.name: p.stat().st_mtime_ns for p in generated.glob("shard-*.jsonl") if p.name in shards_before
    } == shards_before  # shard 2's generate output too: it resumed at its filter

    resumed = exported(out)
    assert resumed == reference  # same rows, same content, same order
    ids = [r["id"] for p in sorted(generated.glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]
    assert len(ids) == len(set(ids)) == N_ROWS - 2  # no duplicates, no losses
    assert len(resumed) + len(rejected_rows(out)) == N_ROWS
    assert_each_input_once(out, input_lines(path))  # each line once: in sft/ or rejected/, by source
