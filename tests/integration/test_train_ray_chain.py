"""The training chain through the Ray Train launcher, as a user runs it: SFT -> DPO (from SFT) -> reward
model (from SFT) -> online DPO (from DPO, N=4, reward-model scorer), each one
`alignfactory train <step> --workers 2` on 2 CPU workers (DDP over gloo), one Ray session for all four.
SFT (TRL's Trainer) and online DPO (our loop) are also the kill tests: once Ray has registered a
step's first checkpoint, its rank 1 is SIGKILLed; the group restarts and both new workers resume
from that checkpoint. (A worker group costs 30-50 s to start here, so the kills ride on the chain.)

Tiny random llama (tests of the training code, not of the weights) and the factory-format run dir of
test_train_chain. Every worker writes what it did to <storage>/<step>/workers/ (ray_launcher's
docstring): which rows it trained on, and a digest of its final weights.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import PY, REPO, read_jsonl, write_jsonl
from tests.integration.test_train_chain import distance, make_run_dir, weights

pytestmark = pytest.mark.slow

ONLINE_STEPS = 8
SFT_STEPS = 8  # a checkpoint every 2: killed after the first, resumed from it

# One Ray session (2 logical CPUs, started here, never a cluster someone else runs), the CLI's own
# main() for each step, in order; each step's result line and time go to RESULTS.
DRIVER = """
import contextlib, io, json, sys, time, ray
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
from alignfactory.cli import main
results = {}
for argv in json.loads(sys.argv[1]):
    t0, buf = time.perf_counter(), io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    print(buf.getvalue(), flush=True)
    if rc:
        sys.exit(f"{argv[1]}: exit {rc}")
    results[argv[1]] = json.loads(buf.getvalue().strip().splitlines()[-1])
    results[argv[1]]["seconds"] = round(time.perf_counter() - t0, 1)
print("RESULTS " + json.dumps(results, default=str), flush=True)
"""


def registered_steps(run: Path) -> list[int]:
    """Steps of the checkpoints Ray Train's controller has registered (what a restart resumes from)."""
    try:
        snap = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or mid-write
        return []
    return [c["metrics"]["step"] for c in snap.get("checkpoint_results", [])]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from alignfactory.train.common import tiny_llama

    tmp = tmp_path_factory.mktemp("ray_chain")
    base = str(tiny_llama(tmp / "tiny"))
    run = make_run_dir(tmp / "run")
    # make_run_dir writes its 6 preference rows 3 times over; give each copy a prompt of its own, so
    # that DPO's and the reward model's rows differ by content and the shard check can be strict
    pref = read_jsonl(run / "preference/train.jsonl")
    for i, row in enumerate(pref):
        row["prompt"][-1]["content"] += f" (copy {i // 6 + 1})"
    write_jsonl(run / "preference/train.jsonl", pref)
    root, store = tmp / "out", tmp / "store"
    trl = ["--max_length", "128", "--max_steps", "3", "--save_strategy", "no"]
    trl += ["--per_device_train_batch_size", "2"]
    sft_kill = ["--max_steps", str(SFT_STEPS), "--save_strategy", "steps", "--save_steps", "2"]
    steps = [
        ["train", step, "--config", f"pipelines/train_{step}_cpu.yaml", "--workers", "2"]
        + ["--storage-path", str(store), "--name", step, "--data", str(run)]
        + ["--model_name_or_path", src, "--output_dir", str(root / step), *trl]
        + (sft_kill if step == "sft" else [])  # later flags win
        for step, src in (("sft", base), ("dpo", str(root / "sft")), ("reward", str(root / "sft")))
    ]
    steps.append(
        ["train", "online-dpo", "--config", "pipelines/train_online_dpo_cpu.yaml", "--workers", "2"]
        + ["--storage-path", str(store), "--name", "online"]
        + ["--policy", str(root / "dpo"), "--reference", str(root / "dpo"), "--n", "4"]
        + ["--prompts", json.dumps([str(run / "sft/train.jsonl"), str(run / "preference/train.jsonl")])]
        + ["--scorer.reward_model", str(root / "reward"), "--output_dir", str(root / "online")]
        + ["--steps", str(ONLINE_STEPS), "--prompts_per_step", "2", "--save_steps", "2"]
        + ["--max_new_tokens", "8"]
    )
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "ALIGNFACTORY_TRAIN_RECORD_ROWS": "1"}
    env.pop("RAY_ADDRESS", None)
    to_kill = ["sft", "online"]  # in the order they run
    killed, at_kill = {}, {}
    t0 = time.perf_counter()
    with open(tmp / "driver.log", "w") as log:  # a file: nobody reads a pipe while we poll
        p = subprocess.Popen(
            [PY, "-c", DRIVER, json.dumps(steps)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 900
        while time.time() < deadline and p.poll() is None and to_kill:
            step = to_kill[0]
            registered, pid_file = registered_steps(store / step), store / step / "workers/rank-1.pid"
            if registered and pid_file.exists():  # Ray holds a checkpoint to restart from
                at_kill[step], killed[step] = registered, int(pid_file.read_text())
                os.kill(killed[step], signal.SIGKILL)  # rank 1 dies mid-run
                to_kill.pop(0)
            time.sleep(0.1)
        p.wait(timeout=max(1, deadline - time.time()))
    out = (tmp / "driver.log").read_text()
    assert p.returncode == 0, out[-4000:]
    res = json.loads(out.split("RESULTS ", 1)[1].splitlines()[0])
    print("ray chain seconds:", {k: v["seconds"] for k, v in res.items()}, round(time.perf_counter() - t0, 1))
    return {
        "base": base,
        "root": root,
        "store": store,
        "res": res,
        "killed": killed,
        "at_kill": at_kill,
        "log": out,
    }


def workers(chain, step: str, kind: str) -> list:
    d = chain["store"] / step / "workers"
    if kind.endswith(".jsonl"):
        return [read_jsonl(d / f"rank-{r}.{kind}") for r in (0, 1)]
    return [json.loads((d / f"rank-{r}.{kind}").read_text()) for r in (0, 1)]


def test_each_step_starts_from_the_previous_checkpoint(chain):
    root = chain["root"]
    base, sft, dpo, online = (
        weights(p) for p in (chain["base"], root / "sft", root / "dpo", root / "online")
    )
    keys = [k for k in sft if k in base and sft[k].is_floating_point()]
    assert distance(sft, base, keys) > 0
    assert distance(dpo, sft, keys) < distance(sft, base, keys) / 2  # DPO started from SFT
    assert 0 < distance(online, dpo, keys) < distance(dpo, base, keys) / 2  # online DPO from DPO
    rm = weights(root / "reward")  # the reward model's backbone started from SFT
    e_rm, e_sft, e_base = (w["model.embed_tokens.weight"].float() for w in (rm, sft, base))
    assert float((e_rm - e_sft).norm()) < float((e_sft - e_base).norm()) / 2
    assert (
        "ForSequenceClassification"
        in json.loads((root / "reward/config.json").read_text())["architectures"][0]
    )


def test_losses_are_finite_and_online_dpo_logs_pairs_and_margins(chain):
    for step in ("sft", "dpo", "reward"):
        loss = chain["res"][step]["metrics"]["train_loss"]
        assert math.isfinite(loss) and loss > 0, (step, loss)
    logs = [read_jsonl(chain["root"] / f"online/{f}") for f in ("log.jsonl", "log.rank1.jsonl")]
    for rank, log in enumerate(logs):
        for r in log:
            assert r["rank"] == rank and r["prompts"] == 2
            assert r["pairs"] + r["ties_skipped"] + r["low_margin_skipped"] + r["unscored_skipped"] == 2
            assert math.isfinite(r["loss"]) and math.isfinite(r["kl"])
            if r["pairs"]:
                assert r["margin"] > 0 and r["reward_chosen"] > r["reward_rejected"]
                assert r["scorers"].get("reward_model", 0) >= 1
        assert sum(r["pairs"] for r in log) >= 1
    # the step's update used the pairs of both workers: one step, both optimizer_step flags alike
    assert [r["optimizer_step"] for r in logs[0]] == [r["optimizer_step"] for r in logs[1]]


def test_the_two_workers_trained_on_different_rows_into_one_model(chain):
    for step, n in (("sft", SFT_STEPS), ("dpo", 3), ("reward", 3)):
        # a step redone after the restart is logged again: the newest record of each step counts
        b0, b1 = ({b["step"]: b["rows"] for b in rank} for rank in workers(chain, step, "batches.jsonl"))
        assert sorted(b0) == sorted(b1) == list(range(1, n + 1)), step
        assert all(b0.values()) and all(b1.values()), step  # every step saw rows on both ranks
        # each step, rank 1 trained on its own shard of the data, none of rank 0's rows (the fixture
        # makes every training row distinct, so a row hashing alike on both ranks is a shared row)
        for k in b0:
            shared = set(b0[k]) & set(b1[k])
            assert not shared, (step, k, sorted(shared), b0[k], b1[k])
    online = [read_jsonl(chain["root"] / f"online/{f}") for f in ("log.jsonl", "log.rank1.jsonl")]
    for r0, r1 in zip(*online, strict=True):
        assert r0["step"] == r1["step"] and not set(r0["prompt_index"]) & set(r1["prompt_index"])
    for step in ("sft", "dpo", "reward", "online"):  # gradients averaged: one model on every rank
        f0, f1 = workers(chain, step, "final.json")
        assert f0 == f1, (step, f0, f1)
        assert f0["step"] == {"online": ONLINE_STEPS, "sft": SFT_STEPS}.get(step, 3)


def test_a_killed_sft_worker_resumes_from_rays_checkpoint(chain):
    """TRL's Trainer under Ray Train: the restarted group resumes from the checkpoint Ray registered."""
    sft = chain["store"] / "sft"
    assert "sft" in chain["killed"], chain["log"][-3000:]
    assert int((sft / "workers/rank-1.pid").read_text()) != chain["killed"]["sft"]  # the group restarted
    resumed = workers(chain, "sft", "resumed")
    assert len({r["step"] for r in resumed}) == 1, resumed  # both new workers from one checkpoint
    assert all(min(chain["at_kill"]["sft"]) <= r["step"] < SFT_STEPS for r in resumed), resumed
    final = Path(chain["res"]["sft"]["checkpoint"]) / "checkpoint/trainer_state.json"
    assert json.loads(final.read_text())["global_step"] == SFT_STEPS
    assert (chain["root"] / "sft/model.safetensors").is_file()


def test_a_killed_online_dpo_worker_resumes_from_its_checkpoint(chain):
    online = chain["store"] / "online"
    assert "online" in chain["killed"], chain["log"][-3000:]
    assert int((online / "workers/rank-1.pid").read_text()) != chain["killed"]["online"]  # restarted
    resumed = workers(chain, "online", "resumed")
    steps = {r["step"] for r in resumed}
    assert len(steps) == 1, resumed  # both new workers from the same checkpoint
    (step,) = steps
    # the newest checkpoint Ray had registered when rank 1 died (or one it registered in between)
    assert 2 <= max(chain["at_kill"]["online"]) <= step < ONLINE_STEPS, (resumed, chain["at_kill"])
    assert all(Path(r["path"]).parent.parent == online for r in resumed)  # Ray's copy, not output_dir
    final = Path(chain["res"]["online-dpo"]["checkpoint"]) / "checkpoint/state.json"
    assert json.loads(final.read_text())["step"] == ONLINE_STEPS
    for f in ("log.jsonl", "log.rank1.jsonl"):  # the steps redone after the restart are logged once
        assert [r["step"] for r in read_jsonl(chain["root"] / "online" / f)] == list(
            range(1, ONLINE_STEPS + 1)
        )
    assert (chain["root"] / "online/model.safetensors").is_file()


def test_a_resumed_online_dpo_run_cuts_its_log_back_to_the_checkpoint(chain, tmp_path):
    """What a worker killed after its checkpoint leaves: log lines of steps it will do again, maybe
    a line cut off mid-write. The resumed run keeps only the steps up to its checkpoint."""
    import shutil

    from alignfactory.train.online_dpo import OnlineDPO, load_config

    out = tmp_path / "online"
    shutil.copytree(chain["root"] / "online", out)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 9, "rank": 0, "pai')  # killed mid-line
    cfg = load_config(
        "pipelines/train_online_dpo_cpu.yaml",
        {
            "policy": str(chain["root"] / "dpo"),
            "reference": str(chain["root"] / "dpo"),
            "prompts": [str(chain["root"].parent / "run")],
            "output_dir": str(out),
            "scorer": {"kind": "reward_model", "reward_model": str(chain["root"] / "reward")},
        },
    )
    trainer = OnlineDPO(cfg, resume=out / "checkpoint-6")
    assert trainer.start_step == 6
    trainer._cut_log()
    assert [r["step"] for r in read_jsonl(out / "log.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_online_dpo_overrides_are_not_taken_for_abbreviated_launcher_flags():
    """`--n 4` is online DPO's n: argparse's prefix matching once read it as --name 4."""
    from alignfactory.cli import online_overrides, parser

    args, extra = parser().parse_known_args(["train", "online-dpo", "--config", "c.yaml", "--n", "2"])
    assert args.name is None and online_overrides(extra) == {"n": 2}
