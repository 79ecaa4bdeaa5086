"""The ablation YAML: the shipped spec loads; every error names the file and the key."""

from __future__ import annotations

import pytest
import yaml

from alignfactory.ablate.spec import load
from alignfactory.spec import SpecError

SHIPPED = "pipelines/ablate_math.yaml"


def tree() -> dict:
    return {
        "name": "t",
        "runs": {"s": {"pipeline": "pipelines/math_data.yaml"}},
        "data": {
            "v": {"run": "s", "take": "verified"},
            "u": {"run": "s", "take": "unverified"},
        },
        "training": {"sft": [{"step": "sft", "max_steps": 2}], "dpo": [{"step": "sft"}, {"step": "dpo"}]},
        "arms": [
            {"name": "base"},
            {"name": "v", "data": "v", "train": "sft"},
            {"name": "u", "data": "u", "train": "sft"},
        ],
        "compare": [["u", "v"]],
    }


def write(tmp_path, t: dict) -> str:
    p = tmp_path / "ablate.yaml"
    p.write_text(yaml.safe_dump(t))
    return str(p)


def error(tmp_path, t: dict) -> str:
    path = write(tmp_path, t)
    with pytest.raises(SpecError) as e:
        load(path)
    assert path in str(e.value)  # every message names the file
    return str(e.value)


def test_shipped_spec_loads_with_base_first_and_paired_arms():
    spec = load(SHIPPED)
    assert spec.arms[0].data is None and spec.arms[0].train is None  # arm 0 = the base model
    names = {a.name for a in spec.arms}
    assert {"base", "unverified", "verified", "verified_dpo"} <= names
    assert ("unverified", "verified") in spec.compare and ("rm_unverified", "rm_verified") in spec.compare
    assert spec.arm("rm_verified").train == spec.arm("rm_unverified").train  # the same reward recipe
    # compared SFT arms share one training recipe: the same optimizer steps
    assert spec.arm("verified").train == spec.arm("unverified").train
    assert spec.problems.eval >= 200 and spec.eval.max_new_tokens <= 64


def test_set_overrides_apply_before_validation():
    spec = load(SHIPPED, ["problems.train=8", "problems.eval=16", "training.sft.0.max_steps=2"])
    assert (spec.problems.train, spec.problems.eval, spec.training["sft"][0].max_steps) == (8, 16, 2)


def test_base_arm_is_inserted_when_absent(tmp_path):
    t = tree()
    t["arms"] = t["arms"][1:]
    spec = load(write(tmp_path, t))
    assert spec.arms[0].name == "base" and spec.arms[0].data is None
    assert [a.name for a in spec.arms[1:]] == ["v", "u"]


def test_unknown_key_names_its_path(tmp_path):
    t = tree()
    t["arms"][1]["colour"] = "red"
    assert "arms.1.colour: unknown key" in error(tmp_path, t)


def test_dangling_names_are_errors(tmp_path):
    t = tree()
    t["arms"][1]["data"] = "nope"
    assert "arms.1.data: unknown data recipe 'nope'" in error(tmp_path, t)
    t = tree()
    t["data"]["v"]["run"] = "elsewhere"
    assert "data.v.run: unknown run 'elsewhere'" in error(tmp_path, t)
    t = tree()
    t["compare"] = [["u", "ghost"]]
    assert "compare.0: unknown arm 'ghost'" in error(tmp_path, t)
    t = tree()
    t["training"]["sft"][0]["config"] = "pipelines/missing.yaml"
    assert "training.sft.0.config: training config not found" in error(tmp_path, t)


def test_untrained_arm_must_be_first_and_arms_name_both_or_neither(tmp_path):
    t = tree()
    t["arms"].append({"name": "base2"})
    assert "arms.3: only arm 0 may be the untrained base model" in error(tmp_path, t)
    t = tree()
    t["arms"][1].pop("train")
    assert "arms.1: an arm names both data and train" in error(tmp_path, t)


def test_dpo_needs_a_recipe_with_pairs(tmp_path):
    t = tree()
    t["arms"][2]["train"] = "dpo"  # unverified samples have no (correct, incorrect) pairs
    assert "arms.2: DPO needs (correct, incorrect) pairs" in error(tmp_path, t)


def test_a_reward_step_ends_its_recipe_and_needs_pairs(tmp_path):
    t = tree()
    t["training"]["rm"] = [{"step": "reward"}]
    t["arms"] += [{"name": "rm_u", "data": "u", "train": "rm"}, {"name": "rm_v", "data": "v", "train": "rm"}]
    spec = load(write(tmp_path, t))  # unverified data has pairs too (no verdict in their order)
    assert spec.training["rm"][0].config_path == "pipelines/train_reward_cpu.yaml"
    t["training"]["rm"] = [{"step": "reward"}, {"step": "sft"}]
    assert "training.rm.0: a reward step ends its recipe" in error(tmp_path, t)
    t = tree()
    t["data"]["g"] = {"run": "s", "take": "gold"}
    t["training"]["rm"] = [{"step": "reward"}]
    t["arms"].append({"name": "rm_g", "data": "g", "train": "rm"})
    assert "arms.3: a reward model needs pairs: take 'gold' has none" in error(tmp_path, t)


def test_bad_values_and_duplicates(tmp_path):
    t = tree()
    t["data"]["v"]["take"] = "everything"
    assert "data.v.take" in error(tmp_path, t)
    t = tree()
    t["seeds"] = [0, 0]
    assert "seeds: duplicate seeds" in error(tmp_path, t)
    t = tree()
    t["arms"][2]["name"] = "v"
    assert "arms.2.name: duplicate arm 'v'" in error(tmp_path, t)
