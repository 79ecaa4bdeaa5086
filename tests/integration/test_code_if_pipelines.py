"""pipelines/code_data.yaml and pipelines/if_data.yaml end to end: real local Ray, the real embedded
model, the real sandbox. Small (3 rows, 2 samples, 48 tokens): the 135M model writes mostly wrong
code, which is rejected, correctly. With include_reference the seed line's reference (a solution; a
check.pass response) is one more candidate, so every row is certain to reach sft/: a test that only
re-checked what reached sft/ could otherwise pass on an empty set. What must hold: every input line
is accounted for once (row by row), the pass matrices are in meta, the output files exist, and
whatever reaches sft/ really passes its checks."""

import pytest

from alignfactory.run import Runner
from alignfactory.spec import load_spec
from tests.integration.conftest import REPO, assert_each_input_once, input_lines, read_jsonl, rejected_rows

LIMIT = 3


def run(spec_name: str, tmp_path, sets: list[str]):
    spec_path = REPO / "pipelines" / spec_name
    seed = {"code_data.yaml": "code_seed.jsonl", "if_data.yaml": "if_seed.jsonl"}[spec_name]
    sets = [
        f"input.path={REPO / 'pipelines' / 'seeds' / seed}",
        "sampling.max_tokens=48",
        "shard_size=4",
        *sets,
    ]
    spec = load_spec(spec_path, sets, output=str(tmp_path / "run"), limit=LIMIT)
    manifest, out = Runner(spec, str(spec_path)).run(), tmp_path / "run"
    accounted = assert_each_input_once(out, input_lines(REPO / "pipelines" / "seeds" / seed, LIMIT))
    assert len(accounted["sft"]) == LIMIT  # include_reference: every row certain to reach sft/
    return manifest, out


def seed_lines(name: str) -> dict[str, dict]:
    """instruction -> the seed line it came from."""
    return {x["instruction"]: x for x in read_jsonl(REPO / "pipelines" / "seeds" / name)}


def stage_rows(out, name: str) -> list[dict]:
    return [r for p in sorted((out / "stages" / name).glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]


def check_outputs(manifest, out, stage_dir: str, stage: str, reasons: set[str]) -> list[dict]:
    rows = stage_rows(out, stage_dir)
    kept = [r for r in rows if not r["reject"]]
    rejects = rejected_rows(out)
    assert len(rows) == LIMIT  # every input row came out of the stage, kept or rejected
    assert {r["reject"]["reason"].split(":")[0] for r in rejects} <= reasons
    assert {r["reject"]["stage"] for r in rejects} <= {stage}  # export rejects nothing: kept rows carry data
    assert len(kept) + len(rejects) == LIMIT

    sft = read_jsonl(out / "sft" / "train.jsonl")
    pref = read_jsonl(out / "preference" / "train.jsonl")
    assert len(sft) == sum(r["messages"][-1]["role"] == "assistant" for r in kept)
    assert len(pref) == sum(len(r["pairs"]) for r in kept)
    for p in pref:  # TRL conversational preference format
        assert p["prompt"][-1]["role"] == "user" and p["chosen"][0]["role"] == "assistant"
        assert p["chosen"] != p["rejected"]
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages[stage]["rows_in"] == LIMIT and stages[stage]["tokens_out"] > 0
    assert all(s["done"] for s in manifest["stages"])
    return rows


@pytest.mark.slow
def test_code_data_spec(local_ray, tmp_path):
    sets = ["stages.0.params.k=2", "stages.0.params.workers=1", "stages.0.params.include_reference=true"]
    manifest, out = run("code_data.yaml", tmp_path, sets)
    reasons = {"no_tests", "no_passing_solution", "sandbox_error"}  # sandbox_error is checked below
    rows = check_outputs(manifest, out, "01-exec_feedback", "exec_feedback", reasons)
    seeds = seed_lines("code_seed.jsonl")

    for r in rows:
        meta = r["meta"]["exec_feedback"]
        seed = seeds[r["messages"][0]["content"]]
        assert meta["entry_point"] == seed["entry_point"]
        refs = [t for t in meta["tests"] if t["source"] == "reference"]
        assert len(refs) == len(seed["tests"])  # the seed line's tests reached the Ray actor
        assert meta["candidates"] == ["model", "model", "reference"]
        assert len(meta["pass_matrix"]) == len(meta["solutions_raw"]) == len(meta["statuses"]) == 3
        assert meta["pass_matrix"][2][: len(refs)] == [True] * len(refs)  # the seed's solution
        assert sum(meta["test_kinds"].values()) == len(meta["tests"]) and meta["test_kinds"][
            "reference"
        ] == len(refs)
        assert all(m is None or len(m) == len(meta["tests"]) for m in meta["pass_matrix"])
        assert meta["sandbox_errors"] == []  # bubblewrap works here: no infrastructure failures
        if not r["reject"]:
            chosen = meta["pass_matrix"][meta["chosen"]]
            assert all(chosen[j] for j in meta["trusted"]) and set(range(len(refs))) <= set(meta["trusted"])
            assert r["messages"][-1]["content"].startswith("```python")

    from alignfactory.stages.verify.code_utils import pick_function
    from sandbox import Case, Job, Limits, Sandbox

    kept = [r for r in rows if not r["reject"]]
    with Sandbox(Limits(wall_s=4)) as sb:  # what reached sft/ passes the reference tests, run afresh
        jobs = [
            Job(
                code=pick_function(r["messages"][-1]["content"], r["meta"]["exec_feedback"]["entry_point"]),
                entry_point=r["meta"]["exec_feedback"]["entry_point"],
                tests=[Case.from_dict(t) for t in seeds[r["messages"][0]["content"]]["tests"]],
            )
            for r in kept
        ]
        assert all(v.passed for v in sb.run(jobs))
    assert (out / "sft" / "train.parquet").exists() and (out / "preference" / "train.parquet").exists()


@pytest.mark.slow
def test_if_data_spec(local_ray, tmp_path):
    sets = [
        "stages.0.params.m=2",
        "stages.0.params.n=2",
        "stages.0.params.max_cases=4",
        "stages.0.params.workers=1",
        "stages.0.params.include_reference=true",
    ]
    manifest, out = run("if_data.yaml", tmp_path, sets)
    rows = check_outputs(manifest, out, "01-autoif", "autoif", {"no_passing_response", "sandbox_error"})
    seeds = seed_lines("if_seed.jsonl")

    for r in rows:
        meta = r["meta"]["autoif"]
        assert meta["functions"][-1]["source"] == "reference" and meta["functions"][-1]["kept"]
        assert len(meta["verifiers_raw"]) == 2 and len(meta["responses"]) == 3
        assert meta["responses_source"] == ["model", "model", "reference"]
        assert len(meta["pass_matrix"]) == len(meta["kept"]) and all(len(m) == 3 for m in meta["pass_matrix"])
        # the reference verifier (seed code, ours) agrees with the sandbox's verdicts on the responses
        ns: dict = {}
        exec(seeds[r["messages"][0]["content"]]["verifier"], ns)
        ref_row = meta["pass_matrix"][meta["kept"].index(len(meta["functions"]) - 1)]
        assert ref_row == [ns["evaluate"](t) is True for t in meta["responses"]]
        assert ref_row[2] is True  # check.pass
        assert not r["reject"] and meta["chosen"] is not None
        assert ns["evaluate"](r["messages"][-1]["content"]) is True
