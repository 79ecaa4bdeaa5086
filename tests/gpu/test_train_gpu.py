"""The training chain in bf16 on a CUDA GPU with the production profiles (a few steps each) and vLLM
sampling in online DPO. Skipped without CUDA or vllm."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.gpu.conftest import NEEDS_CUDA_AND_VLLM

pytestmark = NEEDS_CUDA_AND_VLLM


def test_bf16_chain_with_vllm_sampling(tmp_path):
    from alignfactory.train import common, online_dpo
    from tests.integration.test_train_chain import make_run_dir

    run = make_run_dir(tmp_path / "run")
    model = str(common.link_embedded_model(tmp_path / "smollm2"))
    few = [
        "--max_steps",
        "4",
        "--save_strategy",
        "no",
        "--max_length",
        "1024",
        "--bf16",
        "true",
        "--gradient_accumulation_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
    ]
    res = {}
    for step, src in (("sft", model), ("dpo", tmp_path / "sft"), ("reward", tmp_path / "sft")):
        res[step] = common.train(
            step,
            f"pipelines/train_{step}.yaml",
            ["--model_name_or_path", str(src), "--output_dir", str(tmp_path / step), *few],
            data=[str(run)],
        )
        assert math.isfinite(res[step]["metrics"]["train_loss"]), step
    out = online_dpo.train(
        "pipelines/train_online_dpo.yaml",
        {
            "policy": str(tmp_path / "dpo"),
            "reference": str(tmp_path / "dpo"),
            "prompts": [str(run)],
            "scorer": {"kind": "auto", "reward_model": str(tmp_path / "reward")},
            "output_dir": str(tmp_path / "on"),
            "n": 4,
            "steps": 3,
            "prompts_per_step": 4,
            "max_new_tokens": 64,
            "engine": "vllm",
            "bf16": True,
            "save_steps": 3,
        },
    )
    log = out["log"]
    print(json.dumps(log, indent=1))
    assert len(log) == 3 and sum(r["pairs"] for r in log) >= 1
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in log)
    cfg = json.loads((Path(out["output_dir"]) / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16"
