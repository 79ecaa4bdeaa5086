"""Every notebook in notebooks/ executed with papermill (the venv's python3 kernel) on real small runs
(sft_data.yaml and code_data.yaml on the real embedded model, real local Ray, real sandbox) and on a
synthetic run that carries tags, evolution lineage, judge/reward scores and pairs; a cell error fails.
Also: the inspect API on the real SFT run, row by row, against the run's own files.

real_run() is shared with test_report_browser.py: runs live under pytest's session base temp, so the
second module resumes the finished run (no Ray, no model) instead of making it again."""

import json
import re
from pathlib import Path

import pytest

from alignfactory import cost, inspect, io, records, report
from alignfactory.run import Runner
from alignfactory.spec import load_spec
from tests.integration.conftest import REPO, read_jsonl
from tests.integration.main_job import main_job, main_job_lines
from tests.unit.test_inspect import make_run

CODE_SEEDS = REPO / "tests" / "integration" / "data" / "code_with_impossible_task.jsonl"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SPECS = {
    # "sft" is the main job as shipped (tests/integration/main_job.py: pipelines/sft_data.yaml, its
    # defaults, --limit only, into runs/sft_data), shared with test_main_job, test_sft_data and the
    # browser test.
    # code_data.yaml at its shipped default (include_reference: false), 2 tasks, 2 solutions each:
    # add_numbers (the first code seed: sandbox verdicts and, when one passes, a pair) and a task
    # whose two reference tests contradict each other, so no solution can pass (test_code_default)
    "code": ("code_data.yaml", ["sampling.max_tokens=96", "shard_size=2", "stages.0.params.k=2"]),
}


def real_run(kind: str, tmp_path_factory, request) -> Path:
    """A finished real run: the main job ("sft") or SPECS[kind] under the session's base temp (each
    made once per session)."""
    if kind == "sft":
        return main_job()
    root = tmp_path_factory.getbasetemp() / "inspect_real"
    root.mkdir(exist_ok=True)
    out = root / kind
    spec_name, sets = SPECS[kind]
    sets = [f"input.path={CODE_SEEDS}", *sets]
    manifest = out / "manifest.json"
    if not (manifest.exists() and all(s["done"] for s in json.loads(manifest.read_text())["stages"])):
        request.getfixturevalue("local_ray")  # Ray only when there is work to do
    spec = load_spec(REPO / "pipelines" / spec_name, sets, output=str(out), limit=2)
    Runner(spec, str(REPO / "pipelines" / spec_name)).run()
    return out


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, request):
    return real_run("sft", tmp_path_factory, request)


@pytest.fixture(scope="module")
def code_run(tmp_path_factory, request):
    return real_run("code", tmp_path_factory, request)


@pytest.fixture(scope="module")
def rich_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("synthetic") / "rich")


def test_inspect_on_a_real_run_accounts_for_every_line(sft_run):
    o = inspect.outcomes(sft_run)
    # every line read: exactly once, exported or rejected (n = 1 sample per row)
    assert sorted(o["line"]) == [line for _, line in main_job_lines()]
    assert (o[o["outcome"] == "rejected"]["reason"].str.len() > 0).all()
    # exported rows are the export stage's rows, and sft/train.jsonl holds exactly their messages
    exported = o[o["outcome"] == "exported"]
    final = inspect.final_rows(sft_run)
    assert sorted(exported["id"]) == sorted(r["id"] for r in final)
    assert [records.to_trl_sft(r)["messages"] for r in final] == [
        r["messages"] for r in read_jsonl(sft_run / "sft" / "train.jsonl")
    ]
    # rejected/ holds exactly the rejected lines, each with the stage that dropped it
    rej = inspect.rejected(sft_run)
    rej = rej[~rej["candidate"]]  # eliminated evolutions: their line went on as itself
    assert sorted(zip(rej["line"], rej["stage"], strict=True)) == sorted(
        zip(o[o["outcome"] == "rejected"]["line"], o[o["outcome"] == "rejected"]["stage"], strict=True)
    )
    # per stage: read = kept + rejected, row by row, from the stage's own shards
    for st in inspect.stages(sft_run).itertuples():
        rows = [r for p in sorted((sft_run / st.dir).glob("shard-*.jsonl")) for r in io.read_jsonl(p)[1:]]
        assert st.rows_out == sum(not r["reject"] for r in rows)
        assert st.rejected == sum(bool(r["reject"]) for r in rows)
        candidates = sum(records.discarded_candidate(r) for r in rows)  # made here, not an input row
        assert st.rows_in == st.rows_out + st.rejected - candidates, st.name
    f = inspect.final(sft_run)
    assert (f["response_chars"] > 0).all() and (f["instruction_chars"] > 0).all()
    assert "tags" not in inspect.missing(sft_run)  # the full recipe tags every row it keeps


def test_cost_table_sums_match_the_manifest(sft_run):
    m = inspect.manifest(sft_run)
    c = cost.summary(m, sft_run)
    for s, ms in zip(c["stages"], m["stages"], strict=True):
        for k in ("rows_in", "rows_out", "rejected", "tokens_in", "tokens_out"):
            assert s[k] == ms.get(k, 0), (s["stage"], k)
    gen = next(s for s in c["stages"] if s["stage"].endswith("generate"))
    assert gen["tokens_out"] > 0 and gen["seconds"] > 0
    assert c["total"]["tokens"] == sum(ms.get("tokens_in", 0) + ms.get("tokens_out", 0) for ms in m["stages"])
    n = len(read_jsonl(sft_run / "sft" / "train.jsonl"))
    assert c["per"]["sft_rows"]["count"] == n and c["per"]["sft_rows"]["tokens"] == pytest.approx(
        c["total"]["tokens"] / n, abs=0.01
    )
    table = cost.table(c)
    assert f"{c['total']['tokens_in']}" in table.splitlines()[len(c["stages"]) + 1]


def execute(nb: Path, run_dir: Path, out_dir: Path) -> dict:
    import papermill

    out = out_dir / f"{nb.stem}-{run_dir.name}.ipynb"
    papermill.execute_notebook(
        str(nb), str(out), parameters={"run_dir": str(run_dir)}, progress_bar=False, cwd=str(REPO)
    )
    return json.loads(out.read_text())


def outputs(executed: dict) -> list[dict]:
    return [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def test_notebooks_are_parametrized_and_carry_a_kernelspec():
    assert [p.name for p in NOTEBOOKS] == [
        "inspect_preference.ipynb",
        "inspect_sft.ipynb",
        "inspect_tags.ipynb",
    ]
    for nb in NOTEBOOKS:
        data = json.loads(nb.read_text())
        assert data["metadata"]["kernelspec"]["name"] == "python3"
        params = [c for c in data["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1 and "run_dir =" in "".join(params[0]["source"])
        assert all(not c.get("outputs") for c in data["cells"] if c["cell_type"] == "code")  # stored clean


@pytest.mark.slow
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_real_and_synthetic_runs(nb, sft_run, code_run, rich_run, tmp_path):
    real = code_run if "preference" in nb.stem else sft_run
    for run_dir in (real, rich_run):
        executed = execute(nb, run_dir, tmp_path)  # raises PapermillExecutionError on any cell error
        outs = outputs(executed)
        assert not [o for o in outs if o["output_type"] == "error"]
        images = [o for o in outs if "image/png" in o.get("data", {})]
        if run_dir == rich_run:  # every view has its data here: each plotting view shows an image
            plotting = {view.__name__ for _, _, view, needs in report.VIEWS if needs}
            called = [
                m.group(1)
                for c in executed["cells"]
                if c["cell_type"] == "code"
                for m in re.finditer(r"report\.show\(report\.(\w+)\(", "".join(c["source"]))
            ]
            assert called and len(images) >= sum(name in plotting for name in called), nb.stem
        text = "".join("".join(o.get("text", "")) for o in outs)
        assert str(run_dir.resolve()) in text  # it opened the run it was given
