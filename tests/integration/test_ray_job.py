"""`ray start --head` + `ray job submit --working-dir . -- python -m alignfactory.run ...`:
the main job's spec, a corpus-stage spec, and a quick SFT job whose driver is SIGKILLed, then
submitted again."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

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
from tests.integration.ray_nodes import BIN, node_env, start_head, wait_alive

pytestmark = pytest.mark.slow
SEEDS = REPO / "pipelines" / "seeds" / "sft_seed.jsonl"


@pytest.fixture(scope="module")
def ray_head():
    """One head for the module's jobs, started as a user starts one (`ray start --head`); at the end
    its processes (and the jobs' drivers under it) are SIGKILLed by pid, not `ray stop`, which would
    end every Ray on the machine."""
    import ray

    if ray.is_initialized():  # the integration tests' shared Ray: its 2 CPUs back for the jobs here
        ray.shutdown()
    env = node_env()
    root = Path(tempfile.mkdtemp(prefix="rjb-"))  # short: Ray's socket paths live under it
    head = start_head(root, env, "head", 2, [], object_store_mb=2048)
    try:
        wait_alive(head.dashboard, [head.node])
        yield env, head.dashboard
    finally:
        head.node.kill()
        shutil.rmtree(root, ignore_errors=True)


def submit(ray_head, args: list[str], *extra: str) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir <repo> [extra] -- python -m alignfactory.run ARGS`."""
    env, address = ray_head
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), *extra]
    cmd += ["--", "python", "-m", "alignfactory.run", *args]
    deadline = time.time() + 90
    while True:  # the head's job agent registers a few seconds after `ray start` returns
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        if "No available agent" not in proc.stderr + proc.stdout or time.time() > deadline:
            return proc
        time.sleep(3)


def sets(*kv: str) -> list[str]:
    return [a for x in kv for a in ("--set", x)]


QUICK = ("sampling.max_tokens=16", SHORT_REPLIES, "stages.2.params.min_chars=1")


def test_the_main_job_as_a_job(ray_head, tmp_path):
    """pipelines/sft_data.yaml as shipped (every stage, its own sampling and resources), 2 seeds."""
    out = tmp_path / "run"
    proc = submit(ray_head, ["pipelines/sft_data.yaml", "--limit", "2", "--output", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    manifest = json.loads((out / "manifest.json").read_text())
    shipped = yaml.safe_load((REPO / "pipelines" / "sft_data.yaml").read_text())["stages"]
    assert [s["name"] for s in manifest["stages"]][1:] == [s["name"] for s in shipped]  # after read
    assert all(s["done"] for s in manifest["stages"])
    # row by row: the job read the working-dir copy Ray unpacked, so the file is the one its read
    # stage recorded (the same seed file), and the lines are the first 2 of it
    (read_shard,) = sorted((out / "stages" / "00-read").glob("shard-*.jsonl"))
    src = read_jsonl(read_shard)[1]["source"]["file"]
    assert src.endswith("pipelines/seeds/sft_seed.jsonl") and src != str(
        REPO / "pipelines/seeds/sft_seed.jsonl"
    )
    assert_each_input_once(out, [(str(Path(src).resolve()), n) for _, n in input_lines(SEEDS, 2)])
    assert all(r["messages"][-1]["role"] == "assistant" for r in exported(out))
    assert shutil.which("ray", path=str(BIN))


def test_a_corpus_spec_as_a_job(ray_head, tmp_path):
    """Distributed corpus stages (exact, then MinHash dedup; 2 tasks each) in a submitted job: every
    input line ends in the last stage once, the planted copies rejected as duplicates."""
    texts = [
        "Explain how a rainbow forms after a summer storm over the hills.",
        "Write a haiku about autumn leaves falling in a quiet city park.",
        "List three ways to keep bread fresh for a whole week at home.",
        "Describe the rules of chess for a complete beginner who likes puzzles.",
        "Translate good morning into French, Spanish and German, with notes.",
        "Give one tip for learning to play the guitar as a busy adult.",
        "Summarize the plot of a detective story in two short sentences.",
        "Why do cats purr when they are content and relaxed on a sofa?",
    ]
    rows = [{"instruction": t} for t in texts]
    near = texts[1].replace("quiet", "busy")  # one word of 12 changed: word-3-gram Jaccard 0.54
    rows += [{"instruction": texts[0]}, {"instruction": near}]  # lines 9 (exact copy), 10 (near)
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    spec = tmp_path / "corpus.yaml"
    stages = [
        {"name": "dedup", "resources": {"concurrency": 2, "num_cpus": 0.5}},
        {"name": "dedup", "params": {"method": "minhash", "threshold": 0.4}, "resources": {"concurrency": 2}},
    ]
    tree = {"name": "corpus", "input": {"path": str(path)}, "shard_size": 4, "stages": stages}
    spec.write_text(yaml.safe_dump(tree), "utf-8")
    out = tmp_path / "run"
    proc = submit(ray_head, [str(spec), "--output", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = out / "stages" / "02-dedup"
    kept = [r for p in sorted(last.glob("shard-*.jsonl")) for r in read_jsonl(p)[1:] if not r["reject"]]
    dropped = {r["source"]["line"]: r["reject"]["reason"] for r in rejected_rows(out)}
    assert sorted([r["source"]["line"] for r in kept] + list(dropped)) == list(range(1, 11))  # each once
    assert set(dropped) == {9, 10} and all("duplicate of" in why for why in dropped.values()), dropped


def driver_pid(out: Path) -> int | None:
    """The submitted job's driver: the python process running alignfactory.run into `out`."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and Path(cmd[0]).name.startswith("python") and "alignfactory.run" in cmd and str(out) in cmd:
            return p.pid
    return None


def test_a_killed_job_resumes_when_submitted_again(ray_head, tmp_path):
    """kill -9 of a submitted job's driver at an exact moment: generate (tests/integration/gated.py)
    has written its first 2 shards and holds the third at a gate. The same job submitted again keeps
    the written shards, runs the rest, and accounts for every input line once."""
    out, gate = tmp_path / "run", tmp_path / "gate"
    gate.mkdir()
    args = ["pipelines/sft_quick.yaml", "--limit", "8", "--output", str(out), "-v"]
    args += sets(*QUICK, "shard_size=2", "stages.1.resources.concurrency=1")  # shards one at a time
    args += sets("stages.1.name=tests.integration.gated:GatedGenerate", f"stages.1.params.gate={gate}")
    first = submit(ray_head, args, "--no-wait", "--submission-id", "killed-1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    gen = out / "stages" / "02-gatedgenerate"
    deadline = time.time() + 300
    while not list(gate.glob("waiting-*")):  # the third shard's call waits: shards 0 and 1 written
        assert time.time() < deadline, "no generate call reached the gate"
        time.sleep(0.1)
    (held,) = [int(p.name.split("-")[1]) for p in gate.glob("waiting-*")]
    pid = driver_pid(out)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while driver_pid(out) is not None or psutil.pid_exists(held):  # its job's workers end with it
        assert time.time() < deadline, "the killed job's driver or held worker is still alive"
        time.sleep(0.1)
    before = {p.name: p.stat().st_mtime_ns for p in gen.glob("shard-*.jsonl")}
    assert sorted(before) == ["shard-00000.jsonl", "shard-00001.jsonl"] and not (gen / "_SUCCESS").exists()

    (gate / "open").touch()
    again = submit(ray_head, args, "--submission-id", "resumed-1")
    log = again.stdout + again.stderr
    assert again.returncode == 0 and "succeeded" in log.lower(), log[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in gen.glob("shard-*.jsonl")}
    assert len(after) == 4 and {k: after[k] for k in before} == before  # the written ones were kept
    (read_shard, *_) = sorted((out / "stages" / "00-read").glob("shard-*.jsonl"))
    src = read_jsonl(read_shard)[1]["source"]["file"]  # the working-dir copy the jobs read
    assert_each_input_once(out, [(str(Path(src).resolve()), n) for _, n in input_lines(SEEDS, 8)])
