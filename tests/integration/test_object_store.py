"""Run directories on object storage (issue 18 item 2), against S3 and GCS servers over HTTP (moto,
gcp-storage-emulator: tests/object_store.py), through the same fsspec code a user's bucket sees.

A CPU-only spec (read -> dedup -> filter -> export: no model) keeps the cost in the runs themselves.
The shared Ray's workers reach the servers (the integration conftest starts them before Ray)."""

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from alignfactory import storage
from alignfactory.run import Runner
from alignfactory.spec import validate
from tests.integration.conftest import (
    assert_each_input_once,
    finish_run,
    input_lines,
    ray_address,
    read_jsonl,
    start_run,
    write_jsonl,
)

pytestmark = pytest.mark.slow


def spec_tree(input_path, gate=None) -> dict:
    """gate: a dir; dedup's apply then waits at it after its first shards (tests/integration/gated.py)."""
    dedup = (
        {"name": "tests.integration.gated:GatedDedup", "params": {"gate": str(gate)}}
        if gate
        else {"name": "dedup"}
    )
    return {
        "name": "on_a_store",
        "input": {"path": str(input_path)},
        "shard_size": 3,
        "stages": [
            dedup | {"resources": {"num_cpus": 0.5}},
            {
                "name": "filter",
                "params": {"min_chars": 18, "same_language": False},
                "resources": {"num_cpus": 0.5},
            },
            {"name": "export"},
        ],
    }


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    rows = [
        {"instruction": f"Tell me fact {i}.", "output": f"Fact {i} is {'long ' * (i % 4)}enough."}
        for i in range(11)
    ]
    rows[5] = {"instruction": "tell me FACT 2.", "output": "A duplicate of line 3 after normalization."}
    rows[8] = {"no_instruction": True}  # a read reject
    return write_jsonl(tmp_path_factory.mktemp("store") / "in.jsonl", rows)


@pytest.fixture(scope="module")
def local_run(seeds, tmp_path_factory, local_ray):
    """The same spec on a local run dir: what a run on a store must equal."""
    out = tmp_path_factory.mktemp("store") / "local"
    Runner(validate(spec_tree(seeds)), output=str(out)).run()
    return out


def stage_rows(run_dir) -> dict[str, list[dict]]:
    """Every stage's rows (kept and rejected), without the shard headers (timings differ)."""
    stages = storage.location(run_dir) / "stages"
    return {
        d.name: [r for p in sorted(d.glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]
        for d in sorted(stages.iterdir(), key=lambda d: d.name)
    }


def test_a_run_on_gcs_equals_the_local_run_and_reads_back(gcs_server, seeds, local_run, local_ray):
    """A run dir on gs://: the same rows as on a local dir, row by row; the report, the dataset card
    and the training data loader (`alignfactory train --data gs://...`) read it where it is."""
    url = gcs_server.url("runs", "x")
    manifest = Runner(validate(spec_tree(seeds)), output=url).run()
    run = storage.location(url)
    assert all(s["done"] for s in manifest["stages"])
    assert stage_rows(run) == stage_rows(local_run)
    assert read_jsonl(run / "sft" / "train.jsonl") == read_jsonl(local_run / "sft" / "train.jsonl")
    assert_each_input_once(run, input_lines(seeds))
    assert not (run / storage.LEASE_NAME).exists()  # released at the end
    assert json.loads((run / "manifest.json").read_text())["stages"][1]["name"] == "dedup"
    assert "## Rejected (rejected/)" in (run / "README.md").read_text()

    from alignfactory import report

    written = report.write(url)
    assert str(written) == f"{url}/report.html" and "on_a_store" in written.read_text()

    from alignfactory.train import common

    args = common.with_data(common.parse("sft", "pipelines/train_sft_cpu.yaml"), [url])
    (dataset,) = args[3].datasets
    assert dataset.data_files == f"{url}/sft/train.jsonl"
    train = common.load_train_split(args[0], args[3])
    assert [r["messages"] for r in train] == [
        r["messages"] for r in read_jsonl(local_run / "sft" / "train.jsonl")
    ]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a start_run() driver and its session (a Ray it started dies with it)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def test_a_run_on_s3_is_leased_killed_and_resumed_on_another_cluster(s3_server, seeds, tmp_path, local_ray):
    """Run A (on the shared Ray) holds dedup's apply at a gate after 2 of its 4 shards, with those
    written to s3://; run B on the same dir meanwhile is refused (exit 4, naming the holder). A is
    SIGKILLed; run C, a driver that starts a Ray of its own (another cluster that sees the bucket),
    takes the dead run's lease at once, keeps what A wrote and finishes with the rows of an
    uninterrupted run, every input line accounted for once."""
    gate, open_gate = tmp_path / "gate", tmp_path / "open_gate"
    gate.mkdir()
    open_gate.mkdir()
    (open_gate / "open").touch()
    whole = tmp_path / "whole"  # uninterrupted, local, the same stages
    Runner(validate(spec_tree(seeds, open_gate)), output=str(whole)).run()
    spec = tmp_path / "spec.json"  # JSON is YAML
    spec.write_text(json.dumps(spec_tree(seeds, gate)))
    url = s3_server.url("runs", "x")
    run = storage.location(url)

    a = start_run([str(spec), "--output", url, "-v"], ray_address(local_ray))
    try:
        deadline = time.monotonic() + 300
        while not list(gate.glob("waiting-*")):  # a third apply waits: shards 0 and 1 are written
            assert a.poll() is None, f"run A ended before the gate:\n{a.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no dedup apply reached the gate"
            time.sleep(0.1)
        dedup = run / "stages" / "01-gateddedup"
        written = {p.name: p.read_bytes() for p in dedup.glob("shard-*.jsonl")}
        assert len(written) >= 2 and not (dedup / "_SUCCESS").exists()

        b = start_run([str(spec), "--output", url])
        out_b = b.communicate(timeout=300)[0]
        assert b.returncode == 4, out_b[-3000:]
        assert f"error: {url}" in out_b and f"pid {a.pid}" in out_b  # names the dir and the holder
        assert a.poll() is None  # A was not disturbed
    finally:
        kill_group(a)
    holder = json.loads((run / storage.LEASE_NAME).read_text())
    assert holder["pid"] == a.pid  # A died holding it

    (gate / "open").touch()
    log = finish_run(start_run([str(spec), "--output", url, "-v"]), timeout=600)  # its own Ray
    assert "took over the lease" in log
    assert {p.name: p.read_bytes() for p in dedup.glob("shard-*.jsonl") if p.name in written} == written
    assert stage_rows(run) == stage_rows(whole)
    assert read_jsonl(run / "sft" / "train.jsonl") == read_jsonl(whole / "sft" / "train.jsonl")
    assert_each_input_once(run, input_lines(seeds))
    assert not (run / storage.LEASE_NAME).exists()
