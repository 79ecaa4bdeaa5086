"""pipelines/code_data.yaml at its shipped default, include_reference: false (the model's own solutions
only, as a user runs it). test_code_if_pipelines.py turns the reference on so that rows are certain to
reach sft/; here the reject path is certain too: the second task's two reference tests contradict
each other (one() == 1 and one() == 2), so no solution can pass them and the row must be rejected
`no_passing_solution` (or `truncated` if every solution was cut) with its pass matrix, never exported.
The run is the session's shared code run (test_notebooks.real_run("code"): 2 tasks, k=2, 96 tokens),
made here or resumed by whichever module asks first."""

import pytest

from tests.integration.conftest import assert_each_input_once, input_lines, read_jsonl
from tests.integration.test_notebooks import CODE_SEEDS, real_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def code_run(tmp_path_factory, request):
    return real_run("code", tmp_path_factory, request)


def test_without_the_reference_a_task_no_solution_passes_is_rejected(code_run):
    out = code_run
    seen = assert_each_input_once(out, input_lines(CODE_SEEDS))
    rows = [
        r
        for p in sorted((out / "stages" / "01-exec_feedback").glob("shard-*.jsonl"))
        for r in read_jsonl(p)[1:]
    ]
    by_entry = {r["meta"]["exec_feedback"]["entry_point"]: r for r in rows}
    assert sorted(by_entry) == ["add_numbers", "one"]
    for r in rows:
        meta = r["meta"]["exec_feedback"]
        assert "reference" not in meta["candidates"]  # the shipped default: model solutions only
        assert meta["sandbox_errors"] == []
        refs = [j for j, t in enumerate(meta["tests"]) if t["source"] == "reference"]
        if not r["reject"]:  # exported: its chosen solution passes every reference test
            assert all(meta["pass_matrix"][meta["chosen"]][j] for j in refs)

    impossible = by_entry["one"]
    meta = impossible["meta"]["exec_feedback"]
    assert impossible["reject"]["stage"] == "exec_feedback" and meta["trusted"] == []
    if all(f == "length" for f in meta["finish_reasons"]):
        assert impossible["reject"]["reason"].startswith("truncated")
    else:
        assert impossible["reject"]["reason"] == "no_passing_solution"
        ran = [m for m in meta["pass_matrix"] if m is not None]
        assert ran and not any(m[0] and m[1] for m in ran)  # the two reference tests, never both
    assert (CODE_SEEDS.as_posix(), 2) in {(f, n) for f, n in seen["rejected"]}
    sft = read_jsonl(out / "sft" / "train.jsonl")
    assert len(sft) == len(seen["sft"]) and all("one()" not in r["messages"][0]["content"] for r in sft)
