"""pipelines/math_data.yaml end to end: real local Ray, the real embedded model, --limit 3.

Why sft/ and preference/ each get rows for certain, not by luck:
- sft/: `reference_as_candidate=true` judges each seed line's worked solution as one more candidate,
  and tests/unit/test_reject_sample.py checks every solution's extracted answer equals its `answer`.
  So every row has a correct candidate and reaches sft/ (no row can be rejected).
- preference/: needs one complete incorrect sample among 3 rows x 4 samples. A sample cut at
  max_tokens is "truncated" and never paired, so the budget is 64 tokens (`on_truncated: reject`, no
  retry): in a probe on these three prompts (other seeds), 4 of 12 samples ended within 64 tokens, all
  4 wrong (multi-step, 3-4 digit numbers: 2908, 1728, 110; FACTS: the 135M model gets 17*23 wrong).
  The run is deterministic: fixed spec seed -> fixed per-request seeds -> the same samples every run.
"""

import pytest

from alignfactory.run import Runner
from alignfactory.spec import load_spec
from alignfactory.verify.math import equivalent, extract_answer
from tests.integration.conftest import REPO, read_jsonl, rejected_rows

SPEC = REPO / "pipelines" / "math_data.yaml"
SEEDS = REPO / "pipelines" / "seeds" / "math_seed.jsonl"
LIMIT, N = 3, 4


@pytest.fixture(scope="module")
def math_run(local_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("math") / "run"
    sets = [
        f"input.path={SEEDS}",
        "sampling.max_tokens=64",
        "shard_size=2",  # two shards: the seed fields travel through Ray in both
        f"stages.0.params.n={N}",
        "stages.0.params.reference_as_candidate=true",
        "stages.0.params.on_truncated=reject",
    ]
    spec = load_spec(SPEC, sets, output=str(out), limit=LIMIT)
    return Runner(spec, str(SPEC)).run(), out


def test_every_row_reaches_sft_and_pairs_reach_preference(math_run):
    manifest, out = math_run
    seeds = {x["instruction"]: x for x in read_jsonl(SEEDS)[:LIMIT]}
    rows = [
        r
        for p in sorted((out / "stages" / "01-reject_sample").glob("shard-*.jsonl"))
        for r in read_jsonl(p)[1:]
    ]
    assert len(rows) == LIMIT and not [r for r in rows if r["reject"]] and rejected_rows(out) == []

    for r in rows:
        seed = seeds[r["messages"][0]["content"]]
        meta = r["meta"]["reject_sample"]
        assert meta["mode"] == "reference" and meta["reference"] == seed["answer"]
        assert [s["source"] for s in meta["samples"]] == ["sample"] * N + ["reference"]
        assert all(
            s["verdict"] in ("correct", "incorrect", "no_answer", "truncated") for s in meta["samples"]
        )
        for s in meta["samples"]:  # every verdict agrees with the verifier and the finish reason, re-run here
            if s["finish_reason"] not in ("stop", "input"):
                assert s["verdict"] == "truncated"
                continue
            assert (s["verdict"] == "correct") == equivalent(extract_answer(s["text"]), seed["answer"])
        chosen = r["messages"][-1]["content"]
        assert equivalent(extract_answer(chosen), seed["answer"])  # what reaches sft/ is verified
        assert r["messages"][-1]["finish_reason"] in ("stop", "input")
        for p in r["pairs"]:  # both sides whole
            assert {p["chosen_finish_reason"], p["rejected_finish_reason"]} <= {"stop", "input"}
            assert equivalent(extract_answer(p["chosen"]), seed["answer"])
            assert not equivalent(extract_answer(p["rejected"]), seed["answer"])

    sft = read_jsonl(out / "sft" / "train.jsonl")
    pref = read_jsonl(out / "preference" / "train.jsonl")
    assert len(sft) == LIMIT
    assert len(pref) == sum(len(r["pairs"]) for r in rows) >= 1
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["reject_sample"]["rows_in"] == LIMIT and stages["reject_sample"]["tokens_out"] > 0
    assert all(s["done"] for s in manifest["stages"])


def test_exports_load_with_datasets_in_trl_columns(math_run):
    import datasets

    _, out = math_run
    for fmt, columns in (("sft", ["messages"]), ("preference", ["prompt", "chosen", "rejected"])):
        jsonl = datasets.load_dataset("json", data_files=str(out / fmt / "train.jsonl"), split="train")
        parquet = datasets.load_dataset("parquet", data_files=str(out / fmt / "train.parquet"), split="train")
        on_disk = datasets.load_from_disk(str(out / fmt / "dataset"))
        for ds in (jsonl, parquet, on_disk):
            assert ds.num_rows >= 1 and sorted(ds.column_names) == sorted(columns)
        first = parquet[0]
        if fmt == "sft":
            assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
        else:
            assert first["prompt"][-1]["role"] == "user" and first["chosen"][0]["role"] == "assistant"
            assert first["chosen"] != first["rejected"]
