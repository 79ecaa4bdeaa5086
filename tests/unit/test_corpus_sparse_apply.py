"""The distributed corpus path's sparse apply (CorpusStage.touched): the worker parses only the rows
the plan touches and copies the others byte for byte; the output equals the full apply's."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from alignfactory import io, records, run
from alignfactory.run import workers
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.dedup import Dedup

TEXTS = [
    "Write a poem about the sea at night and the lights of the harbour boats",
    "Explain how a refrigerator moves heat from inside to the kitchen",
    "Write a poem about the sea at night and the lights of the harbor boats",  # near copy of 0
    "请写一篇关于秋天的散文，描写落叶和远山",
    "List three uses of baking soda around the house and why they work",
    "Explain how a refrigerator moves heat from inside to the kitchen",  # exact copy of 1
    "请写一篇关于秋天的散文，描写落叶和远山",  # exact copy of 3
]


def shard_files(tmp_path: Path) -> list[Path]:
    """Two input shards as an earlier stage writes them: header, kept rows, and a row that stage
    rejected (it stays in the file, so kept positions differ from line numbers)."""
    rows = [
        records.new_row([{"role": "user", "content": t}], {"file": "in", "line": i})
        for i, t in enumerate(TEXTS)
    ]
    earlier = records.new_row([{"role": "user", "content": "too short"}], {"file": "in", "line": 99})
    earlier["reject"] = {"stage": "filter", "reason": "min_chars"}
    paths = []
    for i, part in enumerate((rows[:3] + [earlier], [earlier] + rows[3:])):
        stats = {"rows_in": len(part), "rows_out": len(part) - 1, "rejected": 1}
        paths.append(tmp_path / f"shard-{i:05d}.jsonl")
        run.write_shard(paths[-1], part, stats)
    return paths


def run_worker(tmp_path: Path, paths: list[Path], params: dict) -> list[bytes]:
    """summarize (each shard's summary file) -> combine -> _PLAN.pkl -> apply, as the runner does."""
    ctx = StageContext("dedup", 2)
    plan_path = tmp_path / f"run{len(list(tmp_path.glob('run*')))}" / "_PLAN.pkl"
    summarize = run.CorpusWorker("dedup", params, ctx, "summarize", str(plan_path))
    for i, p in enumerate(paths):
        summarize({"shard": [i], "path": [str(p)], "out": [""]})
    got = [pickle.loads(run.summary_path(plan_path, i).read_bytes()) for i in range(len(paths))]
    plan = run.build_stage("dedup", params, ctx).combine([g["summary"] for g in got])
    record = {
        "plan": plan,
        "summarize_seconds": [0.0] * len(paths),
        "combine_seconds": 0.0,
        "kept_lines": [g["kept_lines"] for g in got],
    }
    run.write_plan(plan_path, record)
    apply = run.CorpusWorker("dedup", params, ctx, "apply", str(plan_path))
    outs = [plan_path.parent / "out" / p.name for p in paths]
    for i, (p, out) in enumerate(zip(paths, outs, strict=True)):  # the worker writes each output shard
        apply({"shard": [i], "path": [str(p)], "out": [str(out)]})
    return [out.read_bytes() for out in outs]


def body(data: bytes) -> list[bytes]:
    return data.splitlines()[1:]


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_sparse_apply_equals_the_full_apply_and_copies_untouched_rows_as_bytes(tmp_path, monkeypatch, method):
    paths = shard_files(tmp_path)
    params = Dedup.Params(method=method).model_dump(mode="json")
    sparse = run_worker(tmp_path, paths, params)
    monkeypatch.setattr(Dedup, "touched", lambda self, plan, shard: None)  # the full parse-and-dump path
    workers._CORPUS_STAGES.clear()
    full = run_worker(tmp_path, paths, params)
    assert [body(b) for b in sparse] == [body(b) for b in full]  # the same rows, byte for byte
    for s, f in zip(sparse, full, strict=True):
        hs, hf = (io.json.loads(x.splitlines()[0])["_shard"] for x in (s, f))
        assert {k: hs[k] for k in ("rows_in", "rows_out", "rejected")} == {
            k: hf[k] for k in ("rows_in", "rows_out", "rejected")
        }
    rows = [io.json.loads(line) for data in sparse for line in body(data)]
    assert [r["id"] for r in rows] == [
        records.new_row([{"role": "user", "content": t}], {"file": "in", "line": i})["id"]
        for i, t in enumerate(TEXTS)
    ]  # the earlier stage's reject is not carried; every kept row once, in order
    rejected = {records.instruction(r) for r in rows if r["reject"]}
    want = {TEXTS[5], TEXTS[6]} | ({TEXTS[2]} if method == "minhash" else set())
    assert rejected == want and len([r for r in rows if r["reject"]]) == len(want)
    inputs = {line for p in paths for line in p.read_bytes().splitlines()[1:]}
    for line in (line for data in sparse for line in body(data)):
        assert (line in inputs) != (b'"reject": {' in line)  # untouched rows are their input bytes
