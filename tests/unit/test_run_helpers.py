"""The Ray-free parts of alignfactory.run: shards, the row-loss safety net, per-shard stats,
planning (fingerprints), stale-output removal, segments, and a driver-only run (no Ray)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import alignfactory.llm as llm_pkg
from alignfactory import records, run
from alignfactory.llm.base import EngineError, Sampling
from alignfactory.spec import validate
from alignfactory.stages.assemble.filter import Filter
from alignfactory.stages.base import Stage, StageContext
from alignfactory.stages.synthesize.generate import Generate
from tests.unit.scripted import ScriptedEngine, count_tokens

ZH = "解释一下什么是递归。"


def row(instr: str, answer: str | None = None, line: int = 1) -> dict:
    msgs = [{"role": "user", "content": instr}]
    if answer is not None:  # as the reader gives it: an assistant turn from the input is whole
        msgs.append(records.assistant(answer, records.FROM_INPUT))
    return records.new_row(msgs, {"file": "s.jsonl", "line": line})


def reasons(rows):
    return [r["reject"]["reason"] if r["reject"] else None for r in rows]


# ---- shards -------------------------------------------------------------------------------------


def test_write_shard_read_shard_round_trip(tmp_path):
    rows = [row("a", "A"), records.reject(row(ZH, line=2), "filter", "too_short")]
    stats = {"rows_in": 2, "rows_out": 1, "rejected": 1, "tokens_out": 5}
    path = tmp_path / "stages" / "01-filter" / "shard-00000.jsonl"
    run.write_shard(path, rows, stats)
    got_rows, got_stats = run.read_shard(path)
    assert got_rows == rows
    assert got_stats == stats
    first = json.loads(path.read_text("utf-8").splitlines()[0])
    assert first == {"_shard": stats}  # the header is the first line, so totals() can read just it
    assert ZH.encode("utf-8") in path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["shard-00000.jsonl"]


def test_empty_shard_round_trip(tmp_path):
    run.write_shard(tmp_path / "s.jsonl", [], {"rows_in": 0})
    assert run.read_shard(tmp_path / "s.jsonl") == ([], {"rows_in": 0})


def test_collect_rejected_streams_each_shards_rejected_lines_and_removes_a_stale_file(tmp_path):
    from types import SimpleNamespace

    from alignfactory.run import ledger

    stage = tmp_path / "stages" / "02-filter"
    rows = [row(f"q{i}", line=i) for i in range(6)]
    records.reject(rows[1], "filter", "too short")
    rows[2]["meta"]["judge"] = {"reject": {"would": "not"}}  # a nested "reject" key: a kept row
    records.reject(rows[4], "filter", 'contains "reject": {')
    run.write_shard(stage / "shard-00000.jsonl", rows[:3], {"rows_in": 3, "rejected": 1})
    run.write_shard(stage / "shard-00001.jsonl", rows[3:], {"rows_in": 3, "rejected": 1})
    # a header saying nothing was rejected is believed: its shard is not read
    (stage / "shard-00002.jsonl").write_text('{"_shard": {"rows_in": 0, "rejected": 0}}\nnot json\n')
    empty = tmp_path / "stages" / "03-dedup"
    run.write_shard(empty / "shard-00000.jsonl", rows[5:], {"rows_in": 1, "rejected": 0})
    (tmp_path / "rejected").mkdir()
    (tmp_path / "rejected" / "03-dedup.jsonl").write_text("from an earlier run\n")

    ledger.collect_rejected(tmp_path, [SimpleNamespace(dir=stage), SimpleNamespace(dir=empty)])
    got = (tmp_path / "rejected" / "02-filter.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in got] == [rows[1], rows[4]]
    assert [json.loads(x)["reject"]["reason"] for x in got] == ["too short", 'contains "reject": {']
    assert not (tmp_path / "rejected" / "03-dedup.jsonl").exists()


def test_kept():
    a, b = row("a"), records.reject(row("b"), "x", "y")
    assert run.kept([a, b]) == [a]


# ---- apply_stage: no row lost ---------------------------------------------------------------------


class Marking(Stage):
    """Marks rows it saw; raises on an instruction containing 'boom', drops ones containing 'drop'."""

    def __init__(self, exc=ValueError):
        super().__init__(Stage.Params(), StageContext("marking", 1))
        self.exc = exc
        self.batches: list[list[str]] = []

    def __call__(self, rows):
        self.batches.append([records.instruction(r) for r in rows])
        out = []
        for r in rows:
            if "boom" in records.instruction(r):
                raise self.exc("cannot handle boom")
            self.meta(r)["seen"] = True
            if "drop" not in records.instruction(r):
                out.append(r)
        return out


def test_apply_stage_isolates_an_exception_to_its_row():
    stage = Marking()
    rows = [row("a", line=1), row("boom", line=2), row("c", line=3)]
    out = run.apply_stage(stage, rows)
    assert [r["source"]["line"] for r in out] == [1, 2, 3]
    assert reasons(out) == [None, "stage_error: ValueError: cannot handle boom", None]
    assert out[1]["reject"]["stage"] == "marking"
    assert out[0]["meta"]["marking"] == {"seen": True} and out[2]["meta"]["marking"] == {"seen": True}
    assert stage.batches == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]  # batch, then row by row


def test_apply_stage_single_row_exception_becomes_a_reject():
    stage = Marking(exc=KeyError)
    (out,) = run.apply_stage(stage, [row("boom")])
    assert out["reject"]["reason"].startswith("stage_error: KeyError")
    assert stage.batches == [["boom"]]


def test_apply_stage_rejects_a_silently_dropped_row():
    rows = [row("a", line=1), row("please drop me", line=2), row("c", line=3)]
    out = run.apply_stage(Marking(), rows)
    assert len(out) == 3
    assert [(r["source"]["line"], r["reject"]) for r in out] == [
        (1, None),
        (3, None),
        (2, {"stage": "marking", "reason": "dropped_by_stage"}),
    ]


def test_apply_stage_counts_a_row_as_kept_when_it_parents_an_output():
    engine = ScriptedEngine()
    stage = Generate(Generate.Params(n=2), StageContext("generate", 1), engine=engine)
    src = [row("a"), row("b")]
    out = run.apply_stage(stage, copy.deepcopy(src))
    assert len(out) == 4 and all(r["reject"] is None for r in out)
    assert {p for r in out for p in r["lineage"]["parents"]} == {r["id"] for r in src}


def test_apply_stage_with_an_llm_stage_failing_on_one_row():
    engine = ScriptedEngine(fail_on={"boom": RuntimeError("tokenizer blew up")})
    stage = Generate(Generate.Params(), StageContext("generate", 1), engine=engine)
    src = [row("a", line=1), row("boom", line=2), row("c", line=3)]
    out = run.apply_stage(stage, copy.deepcopy(src))
    assert [r["source"]["line"] for r in out] == [1, 2, 3]
    assert reasons(out) == [None, "stage_error: RuntimeError: tokenizer blew up", None]
    assert out[0]["lineage"]["parents"] == [src[0]["id"]]
    assert out[1]["id"] == src[1]["id"] and out[1]["reject"]["stage"] == "generate"
    assert [len(c["conversations"]) for c in engine.calls] == [3, 1, 1, 1]


def test_apply_stage_lets_engine_error_through():
    engine = ScriptedEngine(engine_error="connection refused")
    stage = Generate(Generate.Params(), StageContext("generate", 1), engine=engine)
    rows = [row("a"), row("b")]
    with pytest.raises(EngineError, match="connection refused"):
        run.apply_stage(stage, rows)
    assert len(engine.calls) == 1  # no row-by-row retry of an engine failure
    assert all(r["reject"] is None for r in rows)  # nothing blamed on the rows


def test_apply_stage_engine_error_during_row_by_row_retry_propagates():
    class Flaky(Marking):
        def __call__(self, rows):
            if len(rows) == 1 and records.instruction(rows[0]) == "c":
                raise EngineError("out of memory")
            return super().__call__(rows)

    with pytest.raises(EngineError, match="out of memory"):
        run.apply_stage(Flaky(), [row("a"), row("boom"), row("c")])


def test_apply_stage_catches_a_dropped_duplicate_row():
    class ById(Stage):  # a natural stage bug: keying rows by id collapses identical rows
        def __call__(self, rows):
            return list({r["id"]: r for r in rows}.values())

    stage = ById(Stage.Params(), StageContext("byid", 1))
    out = run.apply_stage(stage, [row("same", line=1), row("same", line=2)])
    assert len(out) == 2
    assert reasons(out) == [None, "dropped_by_stage"]


# ---- run_on_shard -------------------------------------------------------------------------------


def test_run_on_shard_calls_the_stage_once_per_shard_then_isolates_a_failure_and_counts():
    stage = Marking()
    stage.ctx.batch_size = 2  # the engine's micro-batch: the stage itself sees the whole shard
    rows = [row(t, line=i) for i, t in enumerate(["a", "drop b", "c", "boom", "e"], 1)]
    out, stats = run.run_on_shard(stage, rows)
    assert stage.batches[0] == ["a", "drop b", "c", "boom", "e"]
    assert stage.batches[1:] == [["a"], ["drop b"], ["c"], ["boom"], ["e"]]  # retried row by row
    assert len(out) == 5
    assert sorted(r["source"]["line"] for r in out) == [1, 2, 3, 4, 5]
    assert {k: stats[k] for k in ("rows_in", "rows_out", "rejected", "tokens_in", "tokens_out")} == {
        "rows_in": 5,
        "rows_out": 3,
        "rejected": 2,
        "tokens_in": 0,
        "tokens_out": 0,
    }
    assert isinstance(stats["seconds"], float) and stats["seconds"] >= 0


def test_run_on_shard_reports_only_this_shards_tokens():
    engine = ScriptedEngine({"one two": ["x y z", "w"], "three": ["p", "q"]})
    stage = Generate(Generate.Params(n=2), StageContext("generate", 1, batch_size=1), engine=engine)
    out1, s1 = run.run_on_shard(stage, [row("one two")])
    out2, s2 = run.run_on_shard(stage, [row("three")])
    assert (s1["rows_in"], s1["rows_out"], s1["rejected"]) == (1, 2, 0)
    assert (s1["tokens_in"], s1["tokens_out"]) == (2, 4)
    assert (s2["tokens_in"], s2["tokens_out"]) == (count_tokens("three"), 2)
    assert (stage.tokens_in, stage.tokens_out) == (3, 6)  # the stage keeps the running total


def test_stage_worker_reads_its_start_writes_its_shard_and_passes_others_through(tmp_path):
    """The stage a shard starts at reads it from its file; the worker writes its output shard itself
    (temp named by the driver's pid) and sends on kept rows and stats, never rows to the driver."""
    ctx = StageContext("filter", 2)
    source = tmp_path / "01-x" / "shard-00000.jsonl"
    given = [row("q1", "long enough"), row("q2", "tiny"), records.reject(row("q0"), "read", "bad_row")]
    run.write_shard(source, given, run.counts(given, 3))
    out_dir = tmp_path / "02-filter"
    worker = run.StageWorker("filter", {"min_chars": 5}, ctx, {"dir": str(out_dir), "tag": 7, "last": False})
    assert isinstance(worker.stage, Filter)
    item = {"source": str(source), "outputs": {}}
    later = {"source": "unused", "rows": [row("q3", "tiny")], "outputs": {}}
    batch = {
        "shard": np.array(["shard-00000.jsonl", "shard-00001.jsonl"]),
        "start": np.array([2, 3]),  # the second shard already has stage 2's output
        "payload": np.array([json.dumps(item).encode(), json.dumps(later).encode()], dtype=object),
    }
    res = worker(batch)
    first, second = (json.loads(p) for p in res["payload"])
    written, header = run.read_shard(out_dir / "shard-00000.jsonl")
    assert reasons(written) == [None, "too_short: 4 < 5 chars"]  # the earlier reject is not re-sent
    assert header["rows_out"] == 1 and first["outputs"]["2"] == header
    assert [records.response(r) for r in first["rows"]] == ["long enough"]  # only kept rows go on
    assert second == later and not (out_dir / "shard-00001.jsonl").exists()
    assert list(res["shard"]) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert not list(out_dir.glob(".*tmp*"))  # the temp file was renamed into place
    last = run.StageWorker("filter", {"min_chars": 5}, ctx, {"dir": str(out_dir), "tag": 7, "last": True})
    (done,) = (json.loads(p) for p in last({k: v[:1] for k, v in batch.items()})["payload"])
    assert done["rows"] == [] and done["outputs"]["2"]["rows_out"] == 1  # the driver gets no rows


def test_a_shard_the_driver_cannot_see_stops_the_run_naming_the_node(tmp_path):
    """A run dir on one node's local disk: a worker elsewhere wrote its shard there; the driver must
    not go on as if the rows were never there."""
    from alignfactory.run.shards import NotShared, check_written

    written = tmp_path / "shard-00000.jsonl"
    run.write_shard(written, [], run.counts([], 0))
    check_written(written, {"worker": {"node": "n1"}})  # visible: fine
    with pytest.raises(NotShared, match=r"shard-00001.jsonl: written by a worker on node n2 .* s3://"):
        check_written(tmp_path / "shard-00001.jsonl", {"worker": {"node": "n2"}})


# ---- plan / prepare / segments ------------------------------------------------------------------

BASE = """\
name: t
input: {path: PLACEHOLDER}
model: {backend: auto}
seed: 3
shard_size: 2
stages:
  - name: dedup
  - name: generate
    params: {n: 1}
    resources: {batch_size: 4, concurrency: 1}
  - name: filter
    params: {min_chars: 5}
  - name: export
"""


@pytest.fixture
def seeds(tmp_path) -> Path:
    p = tmp_path / "seeds.jsonl"
    p.write_text("".join(json.dumps({"instruction": f"q{i}"}) + "\n" for i in range(3)), "utf-8")
    return p


@pytest.fixture(autouse=True)
def fixed_backend(monkeypatch):
    """plan() resolves 'auto' for LLM stages; make that independent of this machine's CUDA/vllm."""

    def resolve(cfg):
        return "transformers" if cfg.backend == "auto" else cfg.backend

    monkeypatch.setattr(llm_pkg, "resolve_backend", resolve, raising=False)


def make_tree(seeds: Path) -> dict:
    t = yaml.safe_load(BASE)
    t["input"]["path"] = str(seeds)
    return t


def fps(tree: dict, root: Path) -> list[str]:
    return [s.fingerprint for s in run.plan(validate(tree), root)]


def test_plan_steps_dirs_and_contexts(seeds, tmp_path):
    steps = run.plan(validate(make_tree(seeds)), tmp_path / "run")
    assert [s.name for s in steps] == ["read", "dedup", "generate", "filter", "export"]
    assert [s.dir.name for s in steps] == ["00-read", "01-dedup", "02-generate", "03-filter", "04-export"]
    assert all(s.dir.parent == tmp_path / "run" / "stages" for s in steps)
    gen = steps[2]
    assert (gen.ctx.name, gen.ctx.index, gen.ctx.seed, gen.ctx.batch_size) == ("generate", 2, 3, 4)
    assert gen.ctx.model.backend == "transformers"  # 'auto' resolved at plan time
    assert isinstance(gen.ctx.sampling, Sampling) and gen.ctx.sampling.seed == 3
    assert gen.params.n == 1
    assert len({s.fingerprint for s in steps}) == 5
    assert fps(make_tree(seeds), tmp_path / "elsewhere") == [s.fingerprint for s in steps]  # stable


def test_fingerprint_changes_with_a_stage_param_and_downstream_only(seeds, tmp_path):
    base = fps(make_tree(seeds), tmp_path)
    t = make_tree(seeds)
    t["stages"][2]["params"]["min_chars"] = 6
    changed = fps(t, tmp_path)
    assert changed[:3] == base[:3]  # read, dedup, generate
    assert changed[3] != base[3] and changed[4] != base[4]  # filter and what follows it


def test_fingerprint_changes_upstream_propagate_to_all_downstream(seeds, tmp_path):
    base = fps(make_tree(seeds), tmp_path)
    t = make_tree(seeds)
    t["stages"][0]["params"] = {"on": "conversation"}
    changed = fps(t, tmp_path)
    assert changed[0] == base[0]
    assert all(c != b for c, b in zip(changed[1:], base[1:], strict=True))


def test_fingerprint_changes_when_the_input_file_changes(seeds, tmp_path):
    base = fps(make_tree(seeds), tmp_path)
    with open(seeds, "a", encoding="utf-8") as f:
        f.write(json.dumps({"instruction": "one more"}) + "\n")
    grown = fps(make_tree(seeds), tmp_path)
    assert all(g != b for g, b in zip(grown, base, strict=True))
    # same size, new content: the mtime still tells
    st = seeds.stat()
    seeds.write_text(seeds.read_text("utf-8").replace("q0", "q9"), "utf-8")
    os.utime(seeds, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert fps(make_tree(seeds), tmp_path)[0] != grown[0]


def test_fingerprint_ignores_resources_and_model_transport(seeds, tmp_path):
    base = fps(make_tree(seeds), tmp_path)
    t = make_tree(seeds)
    t["stages"][1]["resources"] = {"batch_size": 32, "concurrency": 4, "num_cpus": 2, "num_gpus": 1}
    t["stages"][2]["resources"] = {"batch_size": 1, "concurrency": 8}
    t["model"].update(max_concurrency=64, timeout_s=5, max_retries=1, gpu_memory_utilization=0.5)
    assert fps(t, tmp_path) == base


@pytest.mark.parametrize(
    "edit, first_changed",
    [
        (lambda t: t["stages"][1]["params"].update(n=2), 2),
        (lambda t: t.update(sampling={"temperature": 0.1}), 2),
        (lambda t: t["model"].update(path="/models/other"), 2),
        (lambda t: t["model"].update(backend="vllm"), 2),
        (lambda t: t.update(seed=4), 1),
        (lambda t: t.update(limit=2), 0),
        (lambda t: t.update(shard_size=5), 0),
        (lambda t: t["input"].update(max_line_bytes=100), 0),
    ],
    ids=["gen-n", "sampling", "model-path", "backend", "seed", "limit", "shard_size", "max_line_bytes"],
)
def test_fingerprint_changes_from_the_first_affected_stage_on(seeds, tmp_path, edit, first_changed):
    base = fps(make_tree(seeds), tmp_path)
    t = make_tree(seeds)
    edit(t)
    changed = fps(t, tmp_path)
    assert changed[:first_changed] == base[:first_changed]
    assert all(c != b for c, b in zip(changed[first_changed:], base[first_changed:], strict=True))


def test_prepare_writes_markers_and_keeps_matching_output(seeds, tmp_path):
    root = tmp_path / "run"
    steps = run.plan(validate(make_tree(seeds)), root)
    run.prepare(steps)
    for s in steps:
        assert (s.dir / "_FINGERPRINT").read_text() == s.fingerprint
    for s in steps:
        run.write_shard(s.dir / "shard-00000.jsonl", [row("x")], {"rows_in": 1})
    run.prepare(run.plan(validate(make_tree(seeds)), root))  # same spec: everything kept
    assert all((s.dir / "shard-00000.jsonl").exists() for s in steps)


def test_prepare_removes_temp_files_a_killed_run_left_but_not_its_own(seeds, tmp_path):
    steps = run.plan(validate(make_tree(seeds)), tmp_path / "r")
    run.prepare(steps)
    stage = steps[1].dir
    (stage / "shard-00000.jsonl").write_text("kept\n")
    (stage / ".shard-00001.jsonl.tmp4242").write_text('{"_shard": {"rows_in"')  # a dead driver's
    (stage / ".shard-00002.jsonl.tmp4242-ab12").write_text("")
    (stage / f".shard-00003.jsonl.tmp{os.getpid()}").write_text("")  # this driver's: in use
    run.prepare(steps)
    assert sorted(p.name for p in stage.iterdir() if p.name != "_FINGERPRINT") == [
        f".shard-00003.jsonl.tmp{os.getpid()}",
        "shard-00000.jsonl",
    ]


def test_prepare_discards_a_stage_dir_whose_fingerprint_differs(seeds, tmp_path):
    root = tmp_path / "run"
    steps = run.plan(validate(make_tree(seeds)), root)
    run.prepare(steps)
    for s in steps:
        run.write_shard(s.dir / "shard-00000.jsonl", [row("x")], {"rows_in": 1})
        (s.dir / "_SUCCESS").write_text("{}")
    t = make_tree(seeds)
    t["stages"][2]["params"]["min_chars"] = 50
    new = run.plan(validate(t), root)
    run.prepare(new)
    survived = [(s.dir / "shard-00000.jsonl").exists() for s in new]
    assert survived == [True, True, True, False, False]
    assert [s.done for s in new] == [True, True, True, False, False]
    for s in new:
        assert (s.dir / "_FINGERPRINT").read_text() == s.fingerprint


def test_prepare_discards_a_stage_dir_without_marker(seeds, tmp_path):
    steps = run.plan(validate(make_tree(seeds)), tmp_path / "run")
    stray = steps[1].dir / "shard-00000.jsonl"
    stray.parent.mkdir(parents=True)
    stray.write_text("half-written\n")
    run.prepare(steps)
    assert not stray.exists()
    assert (steps[1].dir / "_FINGERPRINT").read_text() == steps[1].fingerprint


def test_segments_group_row_stages_and_isolate_corpus_stages(seeds, tmp_path):
    steps = run.plan(validate(make_tree(seeds)), tmp_path)
    assert [[s.name for s in seg] for seg in run.segments(steps)] == [
        ["dedup"],
        ["generate", "filter"],
        ["export"],
    ]
    t = make_tree(seeds)
    t["stages"] = [{"name": n} for n in ["filter", "filter", "dedup", "dedup", "filter", "export"]]
    segs = run.segments(run.plan(validate(t), tmp_path))
    assert [[s.index for s in seg] for seg in segs] == [[1, 2], [3], [4], [5], [6]]


# ---- an export-only spec (its run on Ray: tests/integration/test_pipeline.py) -------------------


def export_only(tmp_path: Path, limit=None) -> dict:
    seeds = tmp_path / "seeds.jsonl"
    if not seeds.exists():  # written once: rewriting it would change the read fingerprint
        seeds.write_text(
            "\n".join(
                [
                    json.dumps({"instruction": "q1", "output": "a1"}),
                    "{not json",
                    json.dumps({"instruction": ZH, "output": "递归是函数调用自身。"}, ensure_ascii=False),
                    json.dumps({"instruction": "no answer"}),
                    json.dumps({"instruction": "q5", "output": "a5"}),
                ]
            )
            + "\n",
            "utf-8",
        )
    tree = {
        "name": "t",
        "input": {"path": str(seeds)},
        "shard_size": 2,
        "limit": limit,
        "stages": [{"name": "export"}],
    }
    return tree


def test_runner_read_respects_limit(tmp_path):
    root = tmp_path / "run"
    runner = run.Runner(validate(export_only(tmp_path, limit=3)), output=str(root))
    run.prepare(runner.steps)
    runner.read()
    shards = sorted((root / "stages" / "00-read").glob("shard-*.jsonl"))
    rows = [r for p in shards for r in run.read_shard(p)[0]]
    assert [r["source"]["line"] for r in rows] == [1, 2, 3]
    assert json.loads((root / "stages" / "00-read" / "_SUCCESS").read_text()) == {
        "rows_in": 3,
        "rows_out": 2,
        "rejected": 1,
        "shards": 2,
    }


# ---- distributed corpus stages: the worker's two phases, without Ray --------------------------------


def test_corpus_worker_summarize_then_apply_on_shard_files(tmp_path):
    import pickle

    texts = [
        "Say hello to the world.",
        "say HELLO to the world.",
        "Another thing entirely.",
        "Say hello to the world.",
    ]
    shards = []
    for k, part in enumerate([texts[:2], texts[2:]]):
        path = tmp_path / f"shard-{k:05d}.jsonl"
        rows = [row(t, line=2 * k + i + 1) for i, t in enumerate(part)]
        if k == 1:
            rows.append(records.reject(row("rejected earlier"), "read", "bad_row"))  # not sent to the stage
        run.write_shard(path, rows, {"rows_in": len(rows)})
        shards.append(path)
    outs = [str(tmp_path / "out" / p.name) for p in shards]
    batch = {
        "shard": np.array([0, 1]),
        "path": np.array([str(p) for p in shards], dtype=object),
        "out": np.array(outs, dtype=object),
    }
    ctx = StageContext("dedup", 1, run_dir=tmp_path)
    plan_path = tmp_path / "_PLAN.pkl"
    run.run_corpus_task(batch, "dedup", {}, ctx, "summarize", str(plan_path))  # -> _SUMMARY-<i>.pkl
    got = [pickle.loads(run.summary_path(plan_path, i).read_bytes()) for i in (0, 1)]
    summaries = [g["summary"] for g in got]
    assert [len(s["ids"]) for s in summaries] == [2, 2] and summaries[0]["keys"].dtype == np.uint64
    assert [g["kept_lines"].tolist() for g in got] == [[0, 1], [0, 1]]  # the rejected row is line 2
    stage = run.build_stage("dedup", {}, ctx)
    record = {"plan": stage.combine(summaries), "summarize_seconds": [0.0, 0.0], "combine_seconds": 0.0}
    run.write_plan(plan_path, record | {"kept_lines": [g["kept_lines"] for g in got]})
    assert sorted(p.name for p in tmp_path.glob("_PLAN*.pkl")) == [
        "_PLAN-00000.pkl",
        "_PLAN-00001.pkl",
        "_PLAN.pkl",
    ]
    assert pickle.loads(plan_path.read_bytes())["plan"]["shards"] is None  # each shard's part: its own file
    res = run.run_corpus_task(batch, "dedup", {}, ctx, "apply", str(plan_path))
    out = []
    for path, payload in zip(outs, res["payload"], strict=True):  # the worker wrote each output shard
        rows, header = run.read_shard(Path(path))
        assert json.loads(payload) == header  # and sent the driver its stats only
        out.append({"stats": header, "rows": rows})
    first = records.message_id([{"role": "user", "content": texts[0]}])
    assert [reasons(o["rows"]) for o in out] == [
        [None, f"duplicate of {first}"],
        [None, f"duplicate of {first}"],
    ]
    assert [o["stats"]["rows_in"] for o in out] == [2, 2] and [o["stats"]["rejected"] for o in out] == [1, 1]
