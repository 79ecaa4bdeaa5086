"""Run directories on object storage (issue 18 item 2), against S3 and GCS servers over HTTP (moto,
gcp-storage-emulator: tests/object_store.py), through the same fsspec code a user's bucket sees.

A CPU-only spec (read -> dedup -> filter -> export: no model) keeps the cost in the runs themselves.
The shared Ray's workers reach the servers (the integration conftest starts them before Ray)."""

import json

import pytest

from alignfactory import storage
from alignfactory.run import Runner
from alignfactory.spec import validate
from tests.integration.conftest import assert_each_input_once, input_lines, read_jsonl, write_jsonl

pytestmark = pytest.mark.slow


def spec_tree(input_path, **stage_params) -> dict:
    return {
        "name": "on_a_store",
        "input": {"path": str(input_path)},
        "shard_size": 3,
        "stages": [
            {"name": "dedup", "resources": {"num_cpus": 0.5}},
            {
                "name": "filter",
                "params": {"min_chars": 18, "same_language": False, **stage_params},
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
