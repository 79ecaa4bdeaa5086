"""Factory output -> SFT -> DPO (from SFT) -> reward model -> online DPO (from DPO, N=4) -> eval,
through `alignfactory train` / `alignfactory eval`, plus `trl sft --config` as TRL's own CLI runs it.
(SFT on 2 Ray Train CPU workers with one worker SIGKILLed mid-run: test_train_ray_chain.)

`trl sft` runs the shipped CPU config on the embedded SmolLM2-135M-Instruct and the main job's output;
`trl dpo` and `trl reward` run theirs as shipped on a real code run's pairs (runs/code_data), from the
tiny model as runs/train/sft.
The chain and the other TRL steps use a tiny random 2-layer llama with
SmolLM2's tokenizer: the training code is under test there, not the weights (the chain took 131 s
on the 135M model, most of test_train_chain's setup). ALIGNFACTORY_TRAIN_MODEL=embedded runs the chain
on the embedded model.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from alignfactory import io, records
from alignfactory.cli import main as cli
from tests.integration.conftest import PY, REPO, read_jsonl

pytestmark = pytest.mark.slow

CODE = [json.loads(x) for x in (REPO / "pipelines/seeds/code_seed.jsonl").read_text().splitlines()[:4]]
IF = [json.loads(x) for x in (REPO / "pipelines/seeds/if_seed.jsonl").read_text().splitlines()[:4]]


def make_run_dir(run: Path) -> Path:
    """A run directory in the export stage's exact formats (records.to_trl_*), with a stage shard
    whose rows carry their seed fields (the eval's references) and held-out rows."""
    sft, pref, shard = [], [], []
    for i in range(24):
        msgs = [
            {"role": "user", "content": f"What is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]
        if i % 3 == 0:
            msgs.insert(0, {"role": "system", "content": "Answer briefly."})
        sft.append(records.to_trl_sft(records.new_row(msgs, {"file": "t", "line": i})))
    for s in CODE:
        prompt = [{"role": "user", "content": s["instruction"]}]
        good = f"```python\ndef {s['entry_point']}(*a):\n    return None\n```"
        pref.append(records.to_trl_preference(prompt, good, "I cannot write code."))
        row = records.new_row(prompt + [{"role": "assistant", "content": good}], {"file": "code", "line": 1})
        shard.append(row | {"seed": {"entry_point": s["entry_point"], "tests": s["tests"]}})
    for s in IF:
        prompt = [{"role": "user", "content": s["instruction"]}]
        pref.append(records.to_trl_preference(prompt, s["check"]["pass"], s["check"]["fail"]))
        row = records.new_row(
            prompt + [{"role": "assistant", "content": s["check"]["pass"]}], {"file": "if", "line": 1}
        )
        shard.append(row | {"seed": {"verifier": s["verifier"]}})
    io.write_jsonl_atomic(run / "sft/train.jsonl", sft[:20])
    io.write_jsonl_atomic(run / "sft/holdout.jsonl", sft[20:])
    io.write_jsonl_atomic(run / "preference/train.jsonl", pref[1:-1] * 3)
    io.write_jsonl_atomic(run / "preference/holdout.jsonl", [pref[0], pref[-1]])
    io.write_jsonl_atomic(run / "stages/02-autoif/shard-00000.jsonl", [{"_shard": {}}] + shard)
    return run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from alignfactory.train.common import tiny_llama

    return str(tiny_llama(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture(scope="session")
def base_model(tmp_path_factory, tiny_model) -> str:
    """The chain's starting model: the tiny random llama, or with ALIGNFACTORY_TRAIN_MODEL=embedded the
    embedded SmolLM2-135M-Instruct (a linked, converted copy)."""
    from alignfactory.train.common import link_embedded_model

    if os.environ.get("ALIGNFACTORY_TRAIN_MODEL") != "embedded":
        return tiny_model
    return str(link_embedded_model(tmp_path_factory.mktemp("model") / "smollm2"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("factory") / "run")


@pytest.fixture(scope="session")
def chain(tmp_path_factory, base_model, run_dir):
    """Run every step once; tests read what each wrote."""
    root = tmp_path_factory.mktemp("chain")
    run = run_dir
    out, t = {}, {}
    common = [
        "--max_length",
        "128",
        "--max_steps",
        "3",
        "--save_strategy",
        "no",
        "--per_device_train_batch_size",
        "2",
    ]
    for step, src, cfg in (
        ("sft", base_model, "sft"),
        ("dpo", root / "sft", "dpo"),
        ("reward", root / "sft", "reward"),
    ):
        t0 = time.perf_counter()
        res = run_cli(
            [
                "train",
                step,
                "--config",
                f"pipelines/train_{cfg}_cpu.yaml",
                "--data",
                str(run),
                "--model_name_or_path",
                str(src),
                "--output_dir",
                str(root / step),
                *common,
            ]
        )
        out[step], t[step] = res, time.perf_counter() - t0
    t0 = time.perf_counter()
    out["online"] = run_cli(
        [
            "train",
            "online-dpo",
            "--config",
            "pipelines/train_online_dpo_cpu.yaml",
            "--policy",
            str(root / "dpo"),
            "--reference",
            str(root / "dpo"),
            "--n",
            "4",
            "--prompts",
            json.dumps([str(run / "sft/train.jsonl"), str(run / "preference/train.jsonl")]),
            "--scorer.reward_model",
            str(root / "reward"),
            "--output_dir",
            str(root / "online"),
            "--steps",
            "3",
            "--prompts_per_step",
            "3",
            "--save_steps",
            "2",
            "--max_new_tokens",
            "16",
        ]
    )
    t["online"] = time.perf_counter() - t0
    print("chain step seconds:", {k: round(v, 1) for k, v in t.items()})
    return {"root": root, "run": run, "base": base_model, "out": out}


def run_cli(argv: list[str]) -> dict:
    import contextlib
    import io as _io

    buf = _io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(argv)
    assert rc == 0, buf.getvalue()
    return json.loads(buf.getvalue().strip().splitlines()[-1])  # the CLI's result line comes last


def weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def distance(a: dict, b: dict, keys) -> float:
    return sum(float((a[k].float() - b[k].float()).pow(2).sum()) for k in keys) ** 0.5


def test_each_step_trains_with_finite_loss(chain):
    for step in ("sft", "dpo", "reward"):
        m = chain["out"][step]["metrics"]
        assert math.isfinite(m["train_loss"]) and m["train_loss"] > 0, (step, m)
        assert (Path(chain["out"][step]["output_dir"]) / "model.safetensors").is_file()


def test_each_step_starts_from_the_previous_checkpoint(chain):
    root = chain["root"]
    base, sft, dpo, online = (
        weights(p) for p in (chain["base"], root / "sft", root / "dpo", root / "online")
    )
    keys = [k for k in sft if k in base and sft[k].is_floating_point()]
    assert distance(sft, base, keys) > 0  # SFT moved the weights
    # DPO starts from SFT: it ends far nearer SFT than the base model is
    assert distance(dpo, sft, keys) < distance(sft, base, keys) / 2
    assert distance(online, dpo, keys) < distance(dpo, base, keys) / 2
    rm = weights(root / "reward")  # the reward model's backbone starts from SFT too
    e_rm, e_sft, e_base = (w["model.embed_tokens.weight"].float() for w in (rm, sft, base))
    assert float((e_rm - e_sft).norm()) < float((e_sft - e_base).norm()) / 2
    cfg = json.loads((root / "reward/config.json").read_text())
    assert "ForSequenceClassification" in cfg["architectures"][0] and len(cfg["id2label"]) == 1


def test_online_dpo_logs_pairs_margins_ties_kl_and_times(chain):
    log = read_jsonl(chain["root"] / "online/log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:
        assert (
            r["pairs"] + r["ties_skipped"] + r["low_margin_skipped"] + r["unscored_skipped"]
            == r["prompts"]
            == 3
        )
        assert math.isfinite(r["loss"]) and math.isfinite(r["kl"])
        assert r["t_generate_s"] > 0 and r["t_score_s"] >= 0 and r["t_optimize_s"] > 0
        if r["pairs"]:
            assert r["margin"] > 0 and r["reward_chosen"] > r["reward_rejected"]
    assert sum(r["pairs"] for r in log) >= 1
    assert sum(r["scorers"].get("reward_model", 0) for r in log) >= 1
    assert (chain["root"] / "online/checkpoint-2/state.json").is_file()  # save_steps 2
    assert (chain["root"] / "online/checkpoint-3/optimizer.pt").is_file()


def test_online_dpo_resumes_from_its_newest_checkpoint(chain, tmp_path):
    from alignfactory.train.online_dpo import OnlineDPO, load_config

    cfg = load_config(
        "pipelines/train_online_dpo_cpu.yaml",
        {
            "policy": str(chain["root"] / "dpo"),
            "reference": str(chain["root"] / "dpo"),
            "prompts": [str(chain["run"])],
            "output_dir": str(chain["root"] / "online"),
            "steps": 3,
        },
    )
    assert OnlineDPO(cfg).start_step == 3  # nothing left to do
    assert OnlineDPO(cfg, resume=False).start_step == 0


def test_eval_before_after_table_on_held_out_rows(chain):
    import contextlib
    import io as _io

    root = chain["root"]
    buf = _io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(
            [
                "eval",
                str(root / "sft"),
                str(root / "online"),
                "--on",
                str(chain["run"]),
                "--before",
                chain["base"],
                "--reward-model",
                str(root / "reward"),
                "--max-new-tokens",
                "16",
            ]
        )
    assert rc == 0
    table = buf.getvalue()
    assert table.splitlines()[0].endswith(f"| {Path(chain['base']).name} | sft | online |")
    res = json.loads((chain["run"] / "eval/online.json").read_text())
    assert res["rows"] == 6  # 4 SFT + 2 preference held-out prompts
    m = res["results"][str(root / "online")]["metrics"]
    assert m["code_pass_rate"]["n"] == 1 and m["constraint_pass_rate"]["n"] == 1  # refs from the shard
    assert m["reward_mean"]["n"] == 6 and math.isfinite(m["reward_mean"]["value"])


def test_trl_sft_on_the_shipped_config_after_the_main_job(tmp_path):
    """What a user runs after `make run`: `alignfactory train link-model`, then `trl sft --config
    pipelines/train_sft_cpu.yaml` with the config's own datasets (runs/sft_data/sft/train.jsonl, the
    main job's output, shared with test_main_job) and model (runs/models/smollm2-135m-instruct, the
    embedded model and its real chat template); only output_dir and max_steps differ."""
    from tests.integration.main_job import main_job

    sft_rows = read_jsonl(main_job() / "sft" / "train.jsonl")
    link = subprocess.run(
        [str(Path(PY).parent / "alignfactory"), "train", "link-model"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert link.returncode == 0, link.stderr[-2000:]
    cfg = yaml.safe_load((REPO / "pipelines/train_sft_cpu.yaml").read_text())
    assert cfg["datasets"][0]["data_files"] == "runs/sft_data/sft/train.jsonl" and sft_rows
    assert (REPO / cfg["model_name_or_path"] / "config.json").is_file()
    cfg |= {"output_dir": str(tmp_path / "out"), "max_steps": 2}
    p = trl_cli("sft", cfg, tmp_path)
    assert (tmp_path / "out/model.safetensors").is_file() and "'loss'" in p.stdout + p.stderr


def trl_cli(step: str, cfg: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run(
        [str(Path(PY).parent / "trl"), step, "--config", str(tmp_path / "c.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p


# ---- `trl dpo` / `trl reward` on the shipped CPU configs, their own paths, a real code run ------------

PAIR_SEEDS = REPO / "tests" / "integration" / "data" / "code_certain_pair.jsonl"


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory, tiny_model, local_ray) -> Path:
    """A user's working directory after `alignfactory run pipelines/code_data.yaml` (into its default
    output, runs/code_data) and an SFT step (runs/train/sft, here the tiny model): the paths
    pipelines/train_dpo_cpu.yaml and train_reward_cpu.yaml name.

    The run is real (embedded model, Ray, sandbox, export), and a preference pair is certain by
    construction, whatever the model writes. Its one task (data/code_certain_pair.jsonl) asks for
    `secret_code()`, whose reference test expects a number the prompt never states:
    - chosen: include_reference makes the seed's solution, which returns that number, a candidate; it
      passes the reference test, which is therefore trusted (reference tests always are);
    - rejected: each model reply ends at its first punctuation or newline (SHORT_REPLIES), so it ends
      by itself (finish reason "stop": run and paired, never dropped as cut) within a few tokens, and
      the model cannot know the number, so it fails the trusted test. The chosen side's text holds
      newlines and a reply cannot, so the two always differ.
    k=2 replies, so at least one and at most two pairs."""
    import contextlib

    from alignfactory.run import Runner
    from alignfactory.spec import load_spec
    from tests.integration.conftest import SHORT_REPLIES

    cwd = tmp_path_factory.mktemp("user")
    spec_path = REPO / "pipelines" / "code_data.yaml"
    sets = [
        f"input.path={PAIR_SEEDS}",
        "stages.0.params.include_reference=true",
        "stages.0.params.k=2",
        "stages.0.params.workers=1",
        "sampling.max_tokens=64",
        SHORT_REPLIES,
    ]
    with contextlib.chdir(cwd):  # the default output, runs/<name>, is relative to where a user runs it
        Runner(load_spec(spec_path, sets), str(spec_path)).run()
    (cwd / "runs" / "train").mkdir()
    (cwd / "runs" / "train" / "sft").symlink_to(tiny_model, target_is_directory=True)
    return cwd


def test_the_code_run_wrote_the_pair_it_was_built_to(user_dir):
    """The construction above held: one row, the reference solution chosen over the model's replies."""
    shard = user_dir / "runs" / "code_data" / "stages" / "01-exec_feedback" / "shard-00000.jsonl"
    (row,) = read_jsonl(shard)[1:]
    meta = row["meta"]["exec_feedback"]
    assert not row["reject"] and meta["candidates"] == ["model", "model", "reference"], meta
    pairs = read_jsonl(user_dir / "runs" / "code_data" / "preference" / "train.jsonl")
    assert 1 <= len(pairs) == len(row["pairs"]) <= 2, (meta["solutions_raw"], meta["statuses"])
    for p in pairs:  # oriented as built: the reference solution over a model reply that fails
        assert p["chosen"][0]["content"] == f"```python\n{read_jsonl(PAIR_SEEDS)[0]['solution']}\n```"
        assert "\n" not in p["rejected"][0]["content"] and p["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in p["chosen"]] == ["assistant"] == [m["role"] for m in p["rejected"]]


@pytest.mark.parametrize("step", ["dpo", "reward"])
def test_trl_on_the_shipped_cpu_config_trains_on_the_code_runs_pairs(step, user_dir):
    """`trl <step> --config pipelines/train_<step>_cpu.yaml`, TRL's own CLI as a subprocess, run where
    the user ran the factory, nothing overridden: the config's model (runs/train/sft), data
    (runs/code_data/preference/train.jsonl, a real code run's pairs) and output_dir. It trains on every
    pair the factory wrote (the count it tokenized is the file's) and saves a model."""
    import re

    cfg_path = REPO / "pipelines" / f"train_{step}_cpu.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    (data,) = cfg["datasets"]
    assert data["data_files"] == "runs/code_data/preference/train.jsonl"
    assert cfg["model_name_or_path"] == "runs/train/sft"
    pairs = read_jsonl(user_dir / data["data_files"])
    # its own datasets cache: a fresh load and tokenization, whose counts the log shows
    env = os.environ | {"HF_DATASETS_CACHE": str(user_dir / f".datasets-{step}")}
    p = subprocess.run(
        [str(Path(PY).parent / "trl"), step, "--config", str(cfg_path)],
        cwd=user_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-3000:]
    tokenized = re.findall(r"Tokenizing train dataset: 100%\|[^|\r\n]*\| (\d+)/(\d+)", log)
    assert tokenized and tokenized[-1] == (str(len(pairs)),) * 2, (len(pairs), tokenized, log[-2000:])
    assert "'loss'" in log
    out = user_dir / cfg["output_dir"]
    assert cfg["output_dir"] == f"runs/train/{step}" and (out / "model.safetensors").is_file()
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    assert arch.endswith("ForSequenceClassification" if step == "reward" else "ForCausalLM"), arch


@pytest.mark.parametrize(("step", "data"), [("sft", "sft"), ("dpo", "preference")])
def test_lora_option_trains_and_saves_only_an_adapter(step, data, tiny_model, run_dir, tmp_path):
    """LoRA through the same config keys `trl <step>` reads (use_peft, lora_r, ...): what is saved
    is a LoRA adapter (rank 8, LoRA tensors only), not a full model."""
    out = tmp_path / step
    res = run_cli(
        [
            "train",
            step,
            "--config",
            f"pipelines/train_{step}_cpu.yaml",
            "--data",
            str(run_dir / data / "train.jsonl"),
            "--model_name_or_path",
            tiny_model,
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--max_length",
            "128",
            "--use_peft",
            "true",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
            "--lora_target_modules",
            "all-linear",
        ]
    )
    assert math.isfinite(res["metrics"]["train_loss"])
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
    from safetensors.torch import load_file

    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)
    assert not (out / "model.safetensors").exists()  # the adapter only, not a full copy
