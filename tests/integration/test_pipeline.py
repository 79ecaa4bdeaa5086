"""The spec end to end on a real local Ray cluster and the real embedded model."""

import json

import pytest

from alignfactory.run import Runner
from alignfactory.spec import load_spec, validate
from tests.integration.conftest import (
    REPO,
    SHORT_REPLIES,
    assert_each_input_once,
    exported,
    input_lines,
    read_jsonl,
    rejected_rows,
    write_jsonl,
)
from tests.unit.test_run_helpers import ZH, export_only

SPEC = REPO / "pipelines" / "sft_quick.yaml"
FAST = ["sampling.max_tokens=24", SHORT_REPLIES, "shard_size=4", "stages.2.params.min_chars=1"]


@pytest.fixture(scope="module")
def messy_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "messy.jsonl"
    good = [
        {"instruction": "Name three primary colors."},
        {"instruction": "Write a haiku about autumn rain."},
        {"instruction": "用一句话解释什么是光合作用。"},
        {"conversations": [{"from": "human", "value": "What is 2 + 2?"}]},
        {"messages": [{"role": "user", "content": "Give one tip for learning Python."}]},
        {"instruction": "Translate to French.", "input": "Good morning"},
        {"instruction": "NAME three   primary colors."},  # duplicate of line 1 after normalization
        {"instruction": "用一句话解释什么是光合作用。"},  # exact duplicate
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in good]
    lines.insert(3, '{"instruction": "unterminated')  # malformed JSON, line 4
    lines.insert(5, '{"text": "no instruction here"}')  # no instruction, line 6
    write_jsonl(path, lines)
    with open(path, "ab") as f:
        f.write(b'{"instruction": "caf\xe9 latin-1 bytes"}\n')  # not UTF-8, line 11
    return path


def run(tmp_path, input_path, extra=()):
    sets = [f"input.path={input_path}", *FAST, *extra]
    spec = load_spec(SPEC, sets, output=str(tmp_path / "run"))
    return Runner(spec, str(SPEC)).run(), tmp_path / "run"


def test_spec_end_to_end_accounts_for_every_row(local_ray, tmp_path, messy_input):
    manifest, out = run(tmp_path, messy_input)
    rows = exported(out)
    rejects = rejected_rows(out)
    assert len(rows) + len(rejects) == 11  # every non-blank input line: exported or rejected, once
    assert_each_input_once(out, input_lines(messy_input))  # row by row: each file:line exactly once

    by_stage = {}
    for r in rejects:
        by_stage.setdefault(r["reject"]["stage"], []).append(r)
    read_reasons = sorted(r["reject"]["reason"].split(":")[0] for r in by_stage["read"])
    assert read_reasons == ["bad_json", "bad_row", "not_utf8"]
    assert {r["source"]["line"] for r in by_stage["read"]} == {4, 6, 11}
    assert len(by_stage["dedup"]) == 2 and all(
        r["reject"]["reason"].startswith("duplicate of ") for r in by_stage["dedup"]
    )

    for row in rows:  # TRL conversational format: a user turn answered by the model
        assert [m["role"] for m in row["messages"]][-2:] == ["user", "assistant"]
        assert row["messages"][-1]["content"].strip()
    chinese = [r for r in rows if "光合作用" in r["messages"][0]["content"]]
    assert len(chinese) <= 1

    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["read"]["rows_in"] == 11 and stages["read"]["rejected"] == 3
    assert stages["generate"]["tokens_out"] > 0 and stages["generate"]["tokens_in"] > 0
    assert stages["generate"]["rows_in"] == 6 == stages["generate"]["rows_out"]
    assert all(s["done"] for s in manifest["stages"])

    import datasets

    ds = datasets.load_from_disk(str(out / "sft" / "dataset"))
    assert ds.num_rows == len(rows) and ds.column_names == ["messages"]
    assert datasets.Dataset.from_parquet(str(out / "sft" / "train.parquet")).num_rows == len(rows)

    generated = [
        r for p in sorted((out / "stages" / "02-generate").glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]
    ]
    for r in generated:  # the model's raw text and its provenance stay in the row
        assert (
            r["meta"]["generate"]["model"] and r["lineage"]["stage"] == "generate" and r["lineage"]["parents"]
        )


def test_rerun_reuses_every_shard(local_ray, tmp_path, messy_input):
    _, out = run(tmp_path, messy_input)
    before = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("shard-*.jsonl")}
    first = exported(out)
    run(tmp_path, messy_input)
    after = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("shard-*.jsonl")}
    assert before == after  # nothing recomputed or rewritten
    assert exported(out) == first

    # a changed param re-runs that stage and the ones after it, not the ones before
    run(tmp_path, messy_input, ["stages.2.params.min_chars=5"])
    changed = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("shard-*.jsonl")}
    generate = [p for p in before if "02-generate" in str(p)]
    assert all(changed[p] == before[p] for p in generate)
    assert any(changed.get(p) != before[p] for p in before if "03-filter" in str(p))


def test_killed_engine_actor_is_restarted_and_batch_retried(local_ray, tmp_path, messy_input):
    marker = tmp_path / "crashed"
    extra = [
        "stages.1.name=tests.integration.crashing:CrashOnceGenerate",
        f"stages.1.params.crash_marker={marker}",
    ]
    manifest, out = run(tmp_path, messy_input, extra)
    assert marker.exists()  # the worker really died once
    stages = {s["index"]: s for s in manifest["stages"]}
    assert stages[2]["rows_in"] == stages[2]["rows_out"] == 6  # every row generated despite the crash
    assert len(exported(out)) + len(rejected_rows(out)) == 11


# ---- export alone: a whole-corpus stage in one Ray task that reads and writes the shards itself ----


def test_runner_export_only_accounts_for_every_line_and_resumes(local_ray, tmp_path):
    root = tmp_path / "run"
    runner = Runner(validate(export_only(tmp_path)), output=str(root))
    manifest = runner.run()
    read_stats, export_stats = manifest["stages"][0], manifest["stages"][1]
    assert (read_stats["rows_in"], read_stats["rows_out"], read_stats["rejected"], read_stats["shards"]) == (
        5,
        4,
        1,
        3,
    )
    assert (export_stats["rows_in"], export_stats["rows_out"], export_stats["rejected"]) == (4, 3, 1)
    sft = [json.loads(x) for x in (root / "sft" / "train.jsonl").read_text("utf-8").splitlines()]
    assert [m["messages"][0]["content"] for m in sft] == ["q1", ZH, "q5"]
    rej_read = [json.loads(x) for x in (root / "rejected" / "00-read.jsonl").read_text("utf-8").splitlines()]
    rej_export = [
        json.loads(x) for x in (root / "rejected" / "01-export.jsonl").read_text("utf-8").splitlines()
    ]
    assert [r["reject"]["reason"].split(":")[0] for r in rej_read] == ["bad_json"]
    assert [r["reject"]["reason"] for r in rej_export] == ["no_response"]
    assert len(sft) + len(rej_read) + len(rej_export) == 5  # every line accounted for
    on_disk = json.loads((root / "manifest.json").read_text("utf-8"))
    assert on_disk["stages"][1]["fingerprint"] == runner.steps[1].fingerprint

    shard = root / "stages" / "00-read" / "shard-00000.jsonl"
    exported = root / "sft" / "train.jsonl"
    before = (shard.stat().st_mtime_ns, exported.stat().st_mtime_ns)
    again = Runner(validate(export_only(tmp_path)), output=str(root)).run()
    assert (shard.stat().st_mtime_ns, exported.stat().st_mtime_ns) == before  # reused, not redone
    assert [s["rows_out"] for s in again["stages"]] == [4, 3]
    assert [s["fingerprint"] for s in again["stages"]] == [s["fingerprint"] for s in manifest["stages"]]
