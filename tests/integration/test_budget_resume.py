"""A spec's budget stops a run cleanly between shards; run again with a bigger budget and it resumes
where it stopped, ending with the same rows and the same token count as an uninterrupted run.
Real local Ray, the real embedded model (8 rows, 16 tokens each, 4 shards)."""

import json
import os
import subprocess
import sys

import pytest

from alignfactory.run import Runner
from alignfactory.spec import load_spec
from tests.integration.conftest import REPO, SHORT_REPLIES, exported, ray_address

pytestmark = pytest.mark.slow
SPEC = REPO / "pipelines" / "sft_quick.yaml"
BASE = [
    f"input.path={REPO / 'pipelines' / 'seeds' / 'sft_seed.jsonl'}",
    "sampling.max_tokens=16",
    SHORT_REPLIES,
    "shard_size=2",
    "stages.1.resources.concurrency=1",  # one generate actor: shards finish one at a time
    "stages.2.params.min_chars=1",
]


def run(out, extra=()):
    spec = load_spec(SPEC, [*BASE, *extra], output=str(out), limit=8)
    return Runner(spec, str(SPEC)).run()


def shards(out, stage="02-generate"):
    return {p.name: p.stat().st_mtime_ns for p in (out / "stages" / stage).glob("shard-*.jsonl")}


def test_budget_stop_then_resume_gives_the_uninterrupted_rows(local_ray, tmp_path):
    full = run(tmp_path / "full")
    assert "stopped" not in full and all(s["done"] for s in full["stages"])

    cut = tmp_path / "cut"
    stopped = run(cut, ["budget.tokens=1"])  # spent by the first generated shard
    assert stopped["stopped"].startswith("token budget spent")
    gen = next(s for s in stopped["stages"] if s["name"] == "generate")
    written = shards(cut)
    assert not gen["done"] and 1 <= len(written) < 4
    assert not (cut / "sft").exists()  # export never ran
    assert stopped["cost"]["total"]["tokens"] >= 1

    # still spent: stops before sending any shard. Through the CLI, as a user meets it: exit status
    # 3 (a budget stop, not a failure, not success), the reason on the console
    cli = subprocess.run(
        [sys.executable, "-m", "alignfactory.run", str(SPEC), "--output", str(cut), "--limit", "8"]
        + [a for kv in [*BASE, "budget.tokens=1"] for a in ("--set", kv)],
        cwd=REPO,
        env=os.environ | {"RAY_ADDRESS": ray_address(local_ray)},  # joins the shared Ray
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 3, cli.stdout[-2000:] + cli.stderr[-2000:]
    assert "token budget spent" in cli.stdout + cli.stderr
    again = json.loads((cut / "manifest.json").read_text())
    assert again["stopped"].startswith("token budget spent") and shards(cut) == written

    resumed = run(cut, ["budget.tokens=1000000"])
    assert "stopped" not in resumed and all(s["done"] for s in resumed["stages"])
    assert {k: v for k, v in shards(cut).items() if k in written} == written  # kept, not redone
    assert exported(cut) == exported(tmp_path / "full")
    assert resumed["cost"]["total"]["tokens"] == full["cost"]["total"]["tokens"]  # nothing counted twice
