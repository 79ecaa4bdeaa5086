"""kill -9 during a run, then re-run: the result equals an uninterrupted run's, nothing lost or doubled."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    REPO,
    SHORT_REPLIES,
    assert_each_input_once,
    exported,
    finish_run,
    input_lines,
    read_jsonl,
    rejected_rows,
    start_run,
    write_jsonl,
)

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "alignfactory.run", str(REPO / "pipelines" / "sft_quick.yaml")]
N_ROWS = 16


def sets(input_path: Path) -> list[str]:
    args = []
    for s in (
        f"input.path={input_path}",
        "shard_size=2",
        "sampling.max_tokens=24",
        SHORT_REPLIES,
        "stages.2.params.min_chars=1",
    ):
        args += ["--set", s]
    return args


def run_cli(input_path: Path, out: Path, address: str) -> subprocess.Popen:
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
    proc = run_cli(path, out, address)
    generated = out / "stages" / "02-generate"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(generated.glob("shard-*.jsonl"))) < 2:
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver, mid-stage
    proc.wait()
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the Ray processes it had started
    total = len(list((out / "stages" / "01-dedup").glob("shard-*.jsonl")))  # one per read shard (8 of 2 rows)
    partial = len(list(generated.glob("shard-*.jsonl")))
    assert total == 8 and 2 <= partial < total and not (generated / "_SUCCESS").exists()
    shards_before = {p.name: p.stat().st_mtime_ns for p in generated.glob("shard-*.jsonl")}
    # a shard counts as done when every stage of its segment (generate, filter) wrote it
    whole = len(list((out / "stages" / "03-filter").glob("shard-*.jsonl")))

    log = finish_run(run_cli(path, out, address))
    assert f"{total - whole} shards to run" in log  # only shards not finished before the kill were sent
    assert {
        p.name: p.stat().st_mtime_ns for p in generated.glob("shard-*.jsonl") if p.name in shards_before
    } == shards_before

    resumed = exported(out)
    assert resumed == reference  # same rows, same content, same order
    ids = [r["id"] for p in sorted(generated.glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]
    assert len(ids) == len(set(ids)) == N_ROWS - 2  # no duplicates, no losses
    assert len(resumed) + len(rejected_rows(out)) == N_ROWS
    assert_each_input_once(out, input_lines(path))  # each line once: in sft/ or rejected/, by source
