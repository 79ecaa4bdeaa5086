"""A worker node dies mid-stage (issue 18, item 3). A head and two worker nodes on this machine,
started as a user starts them (`ray start`, each node with its own --temp-dir, ports and CPUs; the
head has none, so stage work runs on the worker nodes); sft_quick and a distributed corpus dedup spec
submitted with `ray job submit`; one worker node's processes (raylet, agents, workers) SIGKILLed by
pid while a worker on it holds a shard of the stage. The job must finish on the surviving node, with
every input line accounted for once and the same rows as an uninterrupted run of the same spec (in
this process, on the integration tests' shared Ray).

The kill moment is exact, not a sleep: the stage is gated (tests/integration/gated.py): its first two
shards go through, every later one waits in its worker, which names its pid; the test kills the node
of a waiting worker once the stage's first output shard exists, then opens the gate."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from alignfactory.run import Runner
from alignfactory.spec import load_spec
from tests.integration import ray_nodes
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
from tests.integration.gated import PASSES
from tests.integration.ray_nodes import BIN, Node, all_alive, get_json, nodes, start_node

pytestmark = pytest.mark.slow
SEEDS = REPO / "pipelines" / "seeds" / "sft_seed.jsonl"
GATED = "tests.integration.gated"
T0 = time.monotonic()


def phase(what: str) -> None:
    """A line in the test's captured output (shown when it fails): seconds since import, what now."""
    print(f"[{time.monotonic() - T0:6.1f} s] {what}", flush=True)


# ---- a cluster of `ray start` nodes on this machine -----------------------------------------------


@dataclass
class Cluster:
    root: Path
    env: dict
    gcs: str  # 127.0.0.1:<port>, for `ray start --address`
    dashboard: str  # http://127.0.0.1:<port>, for `ray job submit` and the REST API
    head: Node
    workers: list[Node]

    def add_worker(self, name: str) -> Node:
        node = start_node(self.root, name, self.env, ["--address", self.gcs, "--num-cpus", "2"])
        self.workers.append(node)
        return node

    def replace_dead(self) -> None:
        """A fresh worker node for each one that died (started, not waited for: wait_up)."""
        for dead in [n for n in self.workers if n.proc.poll() is not None]:
            self.workers.remove(dead)
            self.add_worker(f"{dead.name}x")

    def wait_up(self, timeout: float = 180) -> None:
        """Until the head and every worker node is ALIVE in Ray. A worker whose `ray start` gave up
        (its raylet did not register within Ray's 30 s, seen on a loaded 2-core machine) is started
        again, twice at most."""
        deadline, retries = time.monotonic() + timeout, 2
        while True:
            assert self.head.proc.poll() is None, f"head exited:\n{self.head.log.read_text()[-3000:]}"
            for n in [n for n in self.workers if n.proc.poll() is not None]:
                assert retries > 0, f"{n.name} exited:\n{n.log.read_text()[-3000:]}"
                retries -= 1
                self.replace_dead()
            if all_alive(self.dashboard, [self.head, *self.workers]):
                return
            assert time.monotonic() < deadline, f"nodes not up in {timeout} s"
            time.sleep(0.5)


def start_head(root: Path, env: dict, name: str) -> Cluster:
    # Ray marks a node dead after 5 failed health checks 3 s apart (its defaults): ~15 s before a
    # dead node's actors restart elsewhere. 3 checks 1 s apart here; each check still waits 10 s
    # for a busy raylet's answer, so a slow node is not taken for a dead one.
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    head = ray_nodes.start_head(root, env, name, 0, ["--system-config", json.dumps(health)])
    return Cluster(root, env, head.gcs, head.dashboard, head.node, [])


@pytest.fixture(scope="module")
def cluster(local_ray):
    """A head (no CPUs; dashboard and job agent on) and two worker nodes with 2 logical CPUs each (a
    stage's actors and tasks fit on one node, so either can take over alone). At the end every
    process is SIGKILLed, node by node, by pid: no `ray stop`, which ends every Ray on the machine.
    The integration tests' shared Ray (local_ray) stays up: the uninterrupted reference runs use it."""
    # /tmp/rnd-XXXX: Ray's socket paths (<temp dir>/session_.../sockets/...) must stay under 107 bytes
    root = Path(tempfile.mkdtemp(prefix="rnd-"))
    env = ray_nodes.node_env()
    phase("cluster: start")
    c = None
    try:
        for name in ("head", "head2"):
            c = start_head(root, env, name)
            try:  # the GCS first: worker nodes that start beside it time out on a busy machine
                c.wait_up()
                break
            except AssertionError:  # seen once on a loaded machine: "Failed to start GCS"; new ports
                exited = c.head.proc.poll() is not None
                c.head.kill()
                if not exited or name == "head2":
                    raise
        phase("head up")
        c.add_worker("w1")
        c.add_worker("w2")
        c.wait_up()
        phase("workers up")
        yield c
    finally:
        for n in [*c.workers, c.head] if c else []:
            n.kill()
        shutil.rmtree(root, ignore_errors=True)


# ---- jobs -------------------------------------------------------------------------------------------


def submit(cluster: Cluster, job_id: str, args: list[str]) -> None:
    """`ray job submit --no-wait --working-dir <repo> -- python -m alignfactory.run ARGS`."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO)]
    cmd += ["--submission-id", job_id, "--no-wait", "--", "python", "-m", "alignfactory.run", *args]
    deadline = time.monotonic() + 90
    while True:  # the head's job agent registers a few seconds after the node is up
        proc = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=120, cwd=REPO)
        log = proc.stdout + proc.stderr
        if "No available agent" not in log or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0, log[-3000:]


def job_status(cluster: Cluster, job_id: str) -> str:
    return get_json(f"{cluster.dashboard}/api/jobs/{job_id}")["status"]


def job_logs(cluster: Cluster, job_id: str) -> str:
    return get_json(f"{cluster.dashboard}/api/jobs/{job_id}/logs")["logs"]


def finish(cluster: Cluster, job_id: str, timeout: float = 300) -> str:
    """Wait for a submitted job; it must succeed. Returns its log."""
    deadline = time.monotonic() + timeout
    while (status := job_status(cluster, job_id)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"{job_id} still {status}:\n{job_logs(cluster, job_id)[-3000:]}"
        time.sleep(0.5)
    logs = job_logs(cluster, job_id)
    assert status == "SUCCEEDED", f"{job_id} {status}:\n{logs[-4000:]}"
    return logs


@dataclass
class Kill:
    victim: Node
    node_id: str
    held: int  # shards held at the gate on the victim when it died
    survivors: set[str]  # the other worker nodes' ids


def kill_a_holding_node(cluster: Cluster, job_id: str, gate: Path, stage_dir: Path) -> Kill:
    """Once the stage's first output shard exists and a worker on a worker node waits at the gate
    with a shard, SIGKILL that node's processes (raylet, agents, workers), then open the gate."""
    deadline, asked = time.monotonic() + 240, 0.0
    while True:
        if time.monotonic() - asked > 2:  # the job has not ended (a failure would never reach the gate)
            status, asked = job_status(cluster, job_id), time.monotonic()
            assert status in ("PENDING", "RUNNING"), (
                f"{job_id} {status}:\n{job_logs(cluster, job_id)[-3000:]}"
            )
        waiting = [int(p.name.split("-")[1]) for p in gate.glob("waiting-*")]
        if waiting and any(stage_dir.glob("shard-*.jsonl")):
            on = {n.name: n.pids() for n in cluster.workers}
            holders = [(pid, n) for pid in waiting for n in cluster.workers if pid in on[n.name]]
            if holders:
                victim = holders[0][1]
                break
        if time.monotonic() > deadline:
            pytest.fail(
                f"no shard held at the gate: {sorted(p.name for p in gate.iterdir())}, "
                f"{[(n.name, sorted(n.pids())) for n in cluster.workers]}\n{job_logs(cluster, job_id)[-3000:]}"
            )
        time.sleep(0.1)
    node_id, survivors = victim.node_id(), {n.node_id() for n in cluster.workers if n is not victim}
    killed = victim.kill()
    assert not victim.pids() and {pid for pid, n in holders if n is victim} <= killed
    (gate / "open").touch()
    return Kill(victim, node_id, sum(1 for _, n in holders if n is victim), survivors)


def check_taken_over(cluster: Cluster, kill: Kill, stage_dir: Path) -> list[dict]:
    """Ray marked the node dead, and every shard but the ones that passed the gate before the kill
    (so the ones held on the dead node too) was made on a surviving node. Returns each shard's worker."""
    assert kill.node_id in {n["node_id"] for n in nodes(cluster.dashboard, "DEAD")}
    made = [read_jsonl(p)[0]["_shard"]["worker"] for p in sorted(stage_dir.glob("shard-*.jsonl"))]
    on_victim = [w for w in made if w["node"] == kill.node_id]
    assert len(on_victim) <= PASSES and len(made) - len(on_victim) >= kill.held >= 1, (kill, made)
    assert {w["node"] for w in made} - {kill.node_id} <= kill.survivors, (kill, made)
    return made


def gates(tmp_path: Path) -> tuple[Path, Path]:
    """(the gate of the run a node dies in, the reference run's gate: open from the start)."""
    gate, ref_gate = tmp_path / "gate", tmp_path / "ref-gate"
    gate.mkdir()
    ref_gate.mkdir()
    (ref_gate / "open").touch()
    return gate, ref_gate


def reference(spec: Path, sets: list[str], output: Path, limit: int | None = None) -> None:
    """The same spec run uninterrupted, in this process, on the integration tests' shared Ray."""
    Runner(load_spec(spec, sets, limit=limit, output=str(output))).run()


def stage_dir(run: Path, index: int) -> Path:
    (d,) = (run / "stages").glob(f"{index:02d}-*")
    return d


def kept_ids(run: Path, index: int) -> list[tuple[int, str]]:
    """(source line, row id) of the rows stage `index` kept, in shard order."""
    rows = [r for p in sorted(stage_dir(run, index).glob("shard-*.jsonl")) for r in read_jsonl(p)[1:]]
    return [(r["source"]["line"], r["id"]) for r in rows if not r["reject"]]


ROWS = 6  # sft_quick's seeds: 3 shards of 2, so one is held at the gate after the 2 that pass


def test_sft_quick_survives_a_worker_node(cluster, tmp_path):
    """sft_quick, 6 seeds in 3 shards of 2, greedy at LLM batch size 1 (a row's reply does not depend
    on which rows share its batch); a worker node dies while its generate actor holds a shard."""
    gate, ref_gate = gates(tmp_path)
    out, ref = tmp_path / "run", tmp_path / "ref"
    spec = REPO / "pipelines" / "sft_quick.yaml"

    def sets(gate: Path) -> list[str]:
        return [
            f"input.path={SEEDS}",
            "shard_size=2",
            "sampling.temperature=0",
            "sampling.max_tokens=16",
            SHORT_REPLIES,
            f"stages.1.name={GATED}:GatedGenerate",
            f"stages.1.params.gate={gate}",
            "stages.1.resources.batch_size=1",
            "stages.1.resources.concurrency=1",  # one actor (one model load per run); Ray moves it
            "stages.2.params.min_chars=1",
        ]

    cli = [a for s in sets(gate) for a in ("--set", s)]
    phase("sft: submit")
    submit(
        cluster,
        "sft-node-dies",
        ["pipelines/sft_quick.yaml", "--limit", str(ROWS), "--output", str(out), *cli],
    )
    phase("sft: ref")
    reference(spec, sets(ref_gate), ref, limit=ROWS)  # while the job starts and fills its gate
    phase("sft: ref done")
    kill = kill_a_holding_node(cluster, "sft-node-dies", gate, out / "stages" / "02-gatedgenerate")
    phase("sft: killed")
    (tmp_path / "job.log").write_text(finish(cluster, "sft-node-dies"))
    phase("sft: finished")
    cluster.replace_dead()  # for the next test; it boots while this one checks

    inputs = input_lines(SEEDS, ROWS)
    assert_each_input_once(out, inputs)
    assert_each_input_once(ref, inputs)
    assert kept_ids(out, 2) == kept_ids(ref, 2) and len(kept_ids(out, 2)) == ROWS  # generate: same replies
    assert exported(out) == exported(ref)
    check_taken_over(cluster, kill, stage_dir(out, 2))


def test_corpus_dedup_survives_a_worker_node(cluster, tmp_path):
    """Exact then MinHash dedup, distributed (2 tasks each), 10 rows in 5 shards of 2; a worker node
    dies while a task on it holds a shard of the exact dedup's apply phase."""
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
    near = texts[1].replace("quiet", "busy")
    rows += [{"instruction": texts[0]}, {"instruction": near}]  # lines 9 (exact copy), 10 (near)
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    gate, ref_gate = gates(tmp_path)

    def spec(gate: Path) -> Path:
        stages = [
            {"name": f"{GATED}:GatedDedup", "params": {"gate": str(gate)}, "resources": {"concurrency": 2}},
            {
                "name": "dedup",
                "params": {"method": "minhash", "threshold": 0.4},
                "resources": {"concurrency": 2},
            },
        ]
        tree = {"name": "corpus", "input": {"path": str(path)}, "shard_size": 2, "stages": stages}
        p = gate.with_suffix(".yaml")
        p.write_text(yaml.safe_dump(tree), "utf-8")
        return p

    out, ref = tmp_path / "run", tmp_path / "ref"
    phase("dedup: wait up")
    cluster.wait_up()  # the node replacing the one the last test killed
    phase("dedup: submit")
    submit(cluster, "dedup-node-dies", [str(spec(gate)), "--output", str(out)])
    phase("dedup: ref")
    reference(spec(ref_gate), [], ref)
    phase("dedup: ref done")
    kill = kill_a_holding_node(cluster, "dedup-node-dies", gate, out / "stages" / "01-gateddedup")
    phase("dedup: killed")
    (tmp_path / "job.log").write_text(finish(cluster, "dedup-node-dies"))
    phase("dedup: finished")
    cluster.replace_dead()

    for run in (out, ref):
        kept = [line for line, _ in kept_ids(run, 2)]
        dropped = {r["source"]["line"]: r["reject"]["reason"] for r in rejected_rows(run)}
        assert sorted(kept + list(dropped)) == list(range(1, 11))  # each input line once
        assert set(dropped) == {9, 10} and all("duplicate of" in why for why in dropped.values()), dropped
    assert kept_ids(out, 2) == kept_ids(ref, 2)
    check_taken_over(cluster, kill, stage_dir(out, 1))
