"""kill -9 of the driver at four named moments, then a re-run: each resume gives the uninterrupted
run's rows, and every input line is accounted for once. A CPU-only spec (read -> dedup -> filter ->
filter -> export: no model), so the cost is the runs themselves.

The moments are made exact, not hoped for by polling: io.write_atomic writes `.<name>.tmp<pid>` and
renames it, so a FIFO put at that temp path (the driver's pid is known once it starts, before its
imports finish) blocks the driver in open() right before it writes that one file, with everything
before it written. The test waits for the file before it (its predecessor), checks the driver is
still alive, then SIGKILLs the driver. The FIFO is then replaced by a half-written temp file, which
is what a real kill mid-write leaves behind. The drivers join one Ray cluster (local_ray, as a
`ray job submit` driver joins its cluster), which saves a Ray start per run; a driver's death ends
its job's workers.

    read     00-read: shards 0-1 written, shard 2 not; read has no _SUCCESS
    corpus   01-dedup (a corpus stage): output shard 0 written, shard 1 not
    between  02-filter/shard-00001 written, 03-filter/shard-00001 not (one segment, two stages)
    export   04-export: sft/ already renamed into place, the stage's shards and _SUCCESS not
"""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from alignfactory.run import plan
from alignfactory.spec import validate
from tests.integration.conftest import (
    assert_each_input_once,
    exported,
    finish_run,
    input_lines,
    read_jsonl,
    start_run,
    write_jsonl,
)

pytestmark = pytest.mark.slow

# (stage dir, file the driver is stopped right before, the file that must exist already)
POINTS = {
    "read": ("00-read", "shard-00002.jsonl", "00-read/shard-00001.jsonl"),
    "corpus": ("01-dedup", "shard-00001.jsonl", "01-dedup/shard-00000.jsonl"),
    "between": ("03-filter", "shard-00001.jsonl", "02-filter/shard-00001.jsonl"),
    "export": ("04-export", "shard-00000.jsonl", "../sft/train.jsonl"),
}


def spec_tree(input_path: Path) -> dict:
    return {
        "name": "kill_points",
        "input": {"path": str(input_path)},
        "shard_size": 3,
        "stages": [
            {"name": "dedup", "resources": {"num_cpus": 0.5}},
            {
                "name": "filter",
                "params": {"min_chars": 1, "same_language": False},
                "resources": {"num_cpus": 0.5},
            },
            {
                "name": "filter",
                "params": {"min_chars": 18, "same_language": False},
                "resources": {"num_cpus": 0.5},
            },
            {"name": "export"},
        ],
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory, local_ray):
    os.environ["AF_TEST_RAY_ADDRESS"] = local_ray.get_runtime_context().gcs_address
    root = tmp_path_factory.mktemp("kill_points")
    rows = [
        {"instruction": f"Tell me fact {i}.", "output": f"Fact {i} is {'long ' * (i % 4)}enough."}
        for i in range(14)
    ]
    rows[5] = {"instruction": "tell me FACT 2.", "output": "A duplicate of line 3 after normalization."}
    rows[9] = {"no_instruction": True}  # a read reject
    path = write_jsonl(root / "in.jsonl", rows)
    spec_path = root / "spec.json"  # JSON is YAML
    spec_path.write_text(json.dumps(spec_tree(path)))
    whole = root / "whole"
    finish(start(spec_path, whole))
    yield spec_path, path, whole
    os.environ.pop("AF_TEST_RAY_ADDRESS", None)


def start(spec_path: Path, out: Path) -> subprocess.Popen:
    # -v: the INFO lines the resume checks read
    return start_run([str(spec_path), "--output", str(out), "-v"], os.environ["AF_TEST_RAY_ADDRESS"])


def finish(proc: subprocess.Popen) -> str:
    return finish_run(proc, timeout=400)


def kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)  # the driver: the process that writes the run directory
    proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything it started in its session


def stage_rows(out: Path) -> dict[str, list[dict]]:
    """Every stage's rows (kept and rejected), without the shard headers (timings differ)."""
    return {
        d.name: [r for p in sorted(d.glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]
        for d in sorted((out / "stages").iterdir())
    }


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_9_at_a_point_then_resume_equals_uninterrupted(setup, tmp_path, point):
    spec_path, input_path, whole = setup
    stage_dir, blocked, before = POINTS[point]
    out = tmp_path / "run"
    # Stage dirs with their fingerprints exist before the driver starts, so that the FIFO can be put
    # in place at once: prepare() keeps a dir whose _FINGERPRINT matches the plan.
    steps = plan(validate(spec_tree(input_path)), out)
    for step in steps:
        step.dir.mkdir(parents=True, exist_ok=True)
        (step.dir / "_FINGERPRINT").write_text(step.fingerprint)
    proc = start(spec_path, out)
    fifo = out / "stages" / stage_dir / f".{blocked}.tmp{proc.pid}"
    os.mkfifo(fifo)

    try:
        deadline = time.monotonic() + 300
        while not (out / "stages" / before).exists():
            assert proc.poll() is None, f"the run ended before {before}:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{before} never appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # the driver is now in (or on its way to) open(fifo), where it stays
        assert proc.poll() is None, (
            f"the driver did not stop at {fifo.name}: does write_atomic still name it so?"
        )
        assert not (out / "stages" / stage_dir / blocked).exists()
    finally:
        kill(proc)  # also when an assertion failed: a driver blocked on the FIFO would wait forever
    assert not (out / "stages" / stage_dir / "_SUCCESS").exists()
    fifo.unlink()
    fifo.write_text('{"_shard": {"rows_in"')  # what a kill mid-write leaves: a partial temp file
    shards = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("shard-*.jsonl")}
    finished = {d.name for d in (out / "stages").iterdir() if (d / "_SUCCESS").exists()}
    # what resumes per shard: stages finished before the kill, and a row segment's written shards
    kept = finished | ({"02-filter", "03-filter"} if point == "between" else set())

    log = finish(start(spec_path, out))
    assert not list(out.rglob(".*.tmp*"))  # the partial temp file the kill left was removed
    assert exported(out) == exported(whole)  # same rows, same content, same order
    assert stage_rows(out) == stage_rows(whole)
    assert sorted(map(json.dumps, read_jsonl(out / "rejected" / "00-read.jsonl"))) == sorted(
        map(json.dumps, read_jsonl(whole / "rejected" / "00-read.jsonl"))
    )
    assert_each_input_once(out, input_lines(input_path))
    reused = {p: t for p, t in shards.items() if p.parent.name in kept}
    assert {p: p.stat().st_mtime_ns for p in reused} == reused  # not recomputed, not rewritten
    if point in ("between", "export"):
        assert {"00-read", "01-dedup"} <= finished and reused
    if point == "between":  # shard 1 resumed at its second filter: its first filter's output kept
        assert any(p.parent.name == "02-filter" and p.name == "shard-00001.jsonl" for p in reused)
        assert "filter, filter:" in log and "shards to run" in log
