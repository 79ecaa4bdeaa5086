"""A reward-model arm for real, at tiny size: train_job's reward step (TRL's reward trainer, one step)
on a tiny random llama writes a checkpoint; eval_job loads it and scores the held-out pairs of math eval
items (reward_accuracy). The weights are random: the plumbing is under test, not the accuracy."""

from __future__ import annotations

import json
import re
from pathlib import Path

from alignfactory import io
from alignfactory.ablate import mathset, runner
from alignfactory.train.common import tiny_llama

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "Answer in one short sentence that ends with: The answer is N."


def test_reward_step_then_accuracy_on_held_out_pairs(tmp_path):
    train, evals = mathset.split_problems(4, 4, 0)
    pairs = [
        {
            "prompt": [{"role": "user", "content": p["question"]}],
            "chosen": [{"role": "assistant", "content": f"The answer is {p['answer']}."}],
            "rejected": [{"role": "assistant", "content": f"The answer is {int(p['answer']) + 1}."}],
        }
        for p in train
    ]
    data = tmp_path / "preference.jsonl"
    io.write_jsonl_atomic(data, pairs)
    out = tmp_path / "models" / "reward-0123"
    job = {
        "step": "reward",
        "config": "pipelines/train_reward_cpu.yaml",
        "cwd": str(REPO),
        "set": {"per_device_train_batch_size": 2, "max_length": 128},
        "max_steps": 1,
        "model": str(tiny_llama(tmp_path / "tiny")),
        "data": str(data),
        "rows": len(pairs),
        "seed": 0,
        "out": str(out),
    }
    done = runner.train_job(job)
    assert done == json.loads((out / "_DONE").read_text()) and (done["steps"], done["rows"]) == (1, 4)
    assert "ForSequenceClassification" in json.loads((out / "config.json").read_text())["architectures"][0]

    items = mathset.eval_rows(evals)
    items[-1] = {k: v for k, v in items[-1].items() if k not in ("chosen", "rejected")}  # no pair
    rows = [runner.eval_prompt(it, SYSTEM) for it in items]
    ev = {"model_cfg": {"path": str(out)}, "rows": rows, "eval": {}, "reward_model": True}
    result = runner.eval_job(ev | {"out": str(tmp_path / "evals" / "rm.json")})
    acc = result["items"]["reward_accuracy"]
    assert acc[-1] is None and result["outputs"][-1] == ""  # nothing to score it by: no score, not 0
    for a, text in zip(acc[:-1], result["outputs"][:-1], strict=True):
        chosen, rejected = (float(x) for x in re.findall(r"-?\d+\.\d+", text))
        assert a == float(chosen > rejected)  # the chosen side above the rejected one, ties fail
    assert result["tokens"] == 0  # a reward model generates nothing
    assert json.loads((tmp_path / "evals" / "rm.json").read_text()) == result  # cached for a rerun
