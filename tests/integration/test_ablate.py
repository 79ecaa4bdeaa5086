"""`alignfactory ablate` as a user runs it, once, at tiny size: the shipped pipelines/ablate_math.yaml cut
down to 3 arms (base, unverified, verified), 8 train problems x 4 samples, 16 eval items, 2 SFT steps,
24 new tokens in eval; the real embedded model, the command's default path (the sampling pipeline on a
local Ray, training and eval in the process), HF_HUB_OFFLINE=1.

Checked on that one run: no eval item is in any arm's training data (find_leaks over the arms' data
files, here, not the runner's verdict); every interval holds its point estimate; per-item scores are
aligned with the eval file (same length everywhere, and each score is the item's own answer checked
against that arm's output); a rerun re-uses every finished arm (nothing trained, sampled or evaluated
again: files unchanged, no training log); a planted leak (--eval with a training question) fails with
exit 3 naming the item; `alignfactory report <dir>` renders in headless Chromium (a bar and a whisker
per arm per metric, the comparisons, disagreeing items; no console errors).

4 samples at 40 tokens: the embedded model verifies ~1 sample in 16 (most are wrong or cut), and the SFT
arms need problems with a verified sample; here 2 of the 8 have one (at 2 samples x 24 tokens, 1 had,
and both arms then trained on the same row).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignfactory import io
from alignfactory.ablate import report
from alignfactory.ablate.leak import find_leaks
from tests.integration.conftest import REPO
from tests.integration.test_report_browser import browser, open_report  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

ARMS = ["base", "unverified", "verified"]
N_EVAL = 16


def tiny_spec(path: Path) -> Path:
    """The shipped spec, sized down; everything else (system prompt, sampling pipeline, SFT settings) kept."""
    t = yaml.safe_load((REPO / "pipelines" / "ablate_math.yaml").read_text())
    t["problems"] = {"train": 8, "eval": N_EVAL, "seed": 0}
    t["runs"]["sampled"]["set"] |= {
        "stages.0.params.n": 4,
        "stages.0.resources.batch_size": 16,  # 8 x 4 samples in two generate calls
        "sampling.max_tokens": 40,
    }
    t["data"] = {k: t["data"][k] for k in ("unverified", "verified")}
    t["training"] = {"sft": [t["training"]["sft"][0] | {"max_steps": 2}]}
    t["arms"] = [{"name": "base"}] + [{"name": n, "data": n, "train": "sft"} for n in ARMS[1:]]
    t["compare"] = [["base", "unverified"], ["base", "verified"], ["unverified", "verified"]]
    t["eval"] = {"max_new_tokens": 24, "batch_size": N_EVAL}
    path.write_text(yaml.safe_dump(t, sort_keys=False))
    return path


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "ALIGNFACTORY_PROGRESS": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "alignfactory.cli", *args],
        cwd=REPO,  # the spec names repo-relative pipelines and training configs
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(out: Path) -> dict[str, int]:
    """mtime (ns) of every file an ablation re-uses: sampling runs, arm data, checkpoints, evals."""
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns
        for part in ("runs", "data", "models", "evals")
        for p in sorted((out / part).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    d = tmp_path_factory.mktemp("ablate")
    spec, out = tiny_spec(d / "ablate_tiny.yaml"), d / "out"
    done = cli("ablate", str(spec), "--output", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads((out / "ablation.json").read_text())
    return {"spec": spec, "out": out, "run": done, "result": result, "files": snapshot(out)}


def arm_rows(arm: dict) -> list[dict]:
    """Everything the arm trains on: SFT rows, DPO pairs, online prompts (its data dir's files)."""
    d = Path(arm["data"]["path"])
    return [r for part in ("sft", "preference", "prompts") for r in io.read_jsonl(d / f"{part}.jsonl")]


def test_no_eval_item_is_in_any_arms_training_data(ablation):
    result = ablation["result"]
    evals = io.read_jsonl(Path(result["eval"]["path"]))
    assert len(evals) == result["eval"]["n_items"] == N_EVAL
    trained = [a for a in result["arms"] if a["data"]]
    assert [a["name"] for a in trained] == ARMS[1:]
    for arm in trained:
        rows = arm_rows(arm)
        assert len([r for r in rows if "messages" in r]) == arm["data"]["rows"] >= 1
        assert find_leaks(evals, rows) == [], arm["name"]
        # the check is not vacuous: an eval item made of a training question is found
        q = next(m["content"] for m in rows[0]["messages"] if m["role"] == "user")
        assert find_leaks([{"id": "planted", "question": q}], rows)


def test_intervals_contain_their_estimates_and_arms_are_paired(ablation):
    result = ablation["result"]
    assert [a["name"] for a in result["arms"]] == ARMS
    assert result["eval"]["metrics"] == ["math_accuracy"]
    unv, ver = result["arms"][1:]
    # compared SFT arms: same problems, rows and optimizer steps
    assert unv["data"]["rows"] == ver["data"]["rows"] and unv["train"]["steps"] == ver["train"]["steps"] == 2
    for arm in result["arms"]:
        for m, s in arm["metrics"].items():
            assert s["n"] == N_EVAL and s["lo"] <= s["mean"] <= s["hi"], (arm["name"], m, s)
    assert len(result["comparisons"]) == 3
    for c in result["comparisons"]:
        assert c["n"] == N_EVAL and c["lo"] <= c["diff"] <= c["hi"], c
        assert c["p"] <= c["p_holm"] <= 1


def test_items_are_aligned_with_the_eval_file(ablation):
    from alignfactory.verify import math as vm

    result = ablation["result"]
    evals = io.read_jsonl(Path(result["eval"]["path"]))
    for arm in result["arms"]:
        assert len(arm["outputs"]) == N_EVAL
        scores = arm["items"]["math_accuracy"]
        assert len(scores) == N_EVAL
        # item i's score is item i's answer checked against this arm's output i
        for item, out, score in zip(evals, arm["outputs"], scores, strict=True):
            assert score == float(vm.equivalent(str(item["answer"]), vm.extract_answer(out))), (item, out)


def test_a_rerun_reuses_finished_arms(ablation):
    first = ablation["run"].stdout + ablation["run"].stderr
    assert "Creating dataset mixture" in first  # the first run trained (TRL's log line)
    done = cli("ablate", str(ablation["spec"]), "--output", str(ablation["out"]))
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "Creating dataset mixture" not in log and "reject_sample" not in log  # nothing trained or sampled
    assert snapshot(ablation["out"]) == ablation["files"]  # checkpoints, data, evals untouched
    again = json.loads((ablation["out"] / "ablation.json").read_text())
    assert again["arms"] == ablation["result"]["arms"] and again["table"] == ablation["result"]["table"]
    assert done.stdout.strip() == ablation["result"]["table"]


def test_a_planted_leak_fails_naming_the_item(ablation, tmp_path):
    # a question the verified arm trains on (a train problem without a verified sample is in no arm)
    row = arm_rows(ablation["result"]["arms"][2])[0]
    q = next(m["content"] for m in row["messages"] if m["role"] == "user")
    train = io.read_jsonl(next((ablation["out"] / "problems").glob("*/train.jsonl")))
    answer = next(t["answer"] for t in train if t["messages"][-1]["content"] == q)
    evil = tmp_path / "eval.jsonl"
    io.write_jsonl_atomic(
        evil,
        [
            {"id": "clean-1", "question": "What is 1000 + 2000?", "answer": "3000"},
            {"id": "leaky-1", "question": q, "answer": answer},
        ],
    )
    done = cli("ablate", str(ablation["spec"]), "--output", str(ablation["out"]), "--eval", str(evil))
    assert done.returncode == 3, done.stderr[-3000:]
    assert "leaky-1" in done.stderr and "clean-1" not in done.stderr
    assert "Creating dataset mixture" not in done.stderr and "evaluating" not in done.stderr  # stops first
    assert json.loads((ablation["out"] / "ablation.json").read_text()) == ablation["result"]  # not rewritten


def test_report_renders_in_chromium(ablation, browser):  # noqa: F811
    out, result = ablation["out"], ablation["result"]
    (out / "report.html").unlink()  # written by the run; `alignfactory report <dir>` writes it again
    done = cli("report", str(out), timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == out / "report.html"

    problems, _, page = open_report(browser, out / "report.html", "report_ablation.png")
    assert problems == []
    for m in result["eval"]["metrics"]:
        bars = page.evaluate(
            """m => Array.from(document.querySelectorAll(`svg.bars[data-metric="${m}"] rect.bar`))
                 .map(r => ({arm: r.dataset.arm, mean: +r.dataset.mean, lo: +r.dataset.lo,
                             hi: +r.dataset.hi, h: r.getBoundingClientRect().height}))""",
            m,
        )
        assert [b["arm"] for b in bars] == ARMS  # one drawn bar per arm
        for b, arm in zip(bars, result["arms"], strict=True):
            s = arm["metrics"][m]
            assert b["h"] > 0 and (b["mean"], b["lo"], b["hi"]) == (s["mean"], s["lo"], s["hi"])
        whiskers = page.locator(f'svg.bars[data-metric="{m}"] line.ci')
        assert whiskers.count() == len(ARMS)
    assert page.locator("#ablation-comparisons tbody tr").count() == len(result["comparisons"])
    for c in result["comparisons"]:  # the items shown side by side: as many as disagree (at most 4)
        differ = report.disagreements(result, c["a"], c["b"], c["metric"], k=N_EVAL)
        shown = page.locator(f'table.disagree[data-a="{c["a"]}"][data-b="{c["b"]}"] tbody tr')
        assert shown.count() == min(len(differ), report.DISAGREE), c
    page.close()
