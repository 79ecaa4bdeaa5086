"""The training YAMLs as TRL's own `trl <step>` parsers read them (unknown keys fail), and the
production profiles hold the Qwen2 settings. This machine has no GPU, so the production profiles'
bf16 is switched off for the parse only; tests/gpu runs them as they are."""

from __future__ import annotations

import pytest
import yaml

from alignfactory.train.common import ConfigError, parse
from tests.integration.conftest import REPO

PROFILES = [(step, suffix) for step in ("sft", "dpo", "reward") for suffix in ("", "_cpu")]


@pytest.mark.parametrize(("step", "suffix"), PROFILES)
def test_trl_parses_every_training_profile(step, suffix):
    path = REPO / f"pipelines/train_{step}{suffix}.yaml"
    on_cpu = [] if suffix else ["--bf16", "false", "--use_cpu", "true"]
    _, args, model_args, _ = parse(step, path, on_cpu)
    raw = yaml.safe_load(path.read_text())
    assert args.output_dir == raw["output_dir"] and model_args.model_name_or_path == raw["model_name_or_path"]
    if suffix:
        assert args.use_cpu and not args.bf16
    else:
        assert raw["bf16"] is True and raw["weight_decay"] == 0.1 and raw["max_grad_norm"] == 1.0
        assert args.gradient_checkpointing


@pytest.mark.parametrize("step", ["sft", "dpo"])
def test_production_sft_and_dpo_follow_the_qwen2_schedule(step):
    _, args, _, _ = parse(
        step, REPO / f"pipelines/train_{step}.yaml", ["--bf16", "false", "--use_cpu", "true"]
    )
    assert args.num_train_epochs == 2 and args.learning_rate == 7e-6
    assert args.lr_scheduler_type == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr": 7e-7}
    assert args.max_length >= 4096  # long sequences


def test_sft_profiles_train_on_assistant_tokens_with_bfd_packing():
    for suffix in ("", "_cpu"):
        _, args, _, _ = parse(
            "sft", REPO / f"pipelines/train_sft{suffix}.yaml", ["--bf16", "false", "--use_cpu", "true"]
        )
        assert args.assistant_only_loss and args.chat_template_path.endswith("smollm2_training.jinja")
        assert (REPO / args.chat_template_path).is_file()
        assert args.packing and args.packing_strategy == "bfd"  # padding-free


def test_an_unknown_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "pipelines/train_sft_cpu.yaml").read_text() + "learning_rat: 1.0e-5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*learning_rat"):
        parse("sft", bad)
