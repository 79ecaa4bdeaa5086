"""Online DPO's best/worst selection, prompt loading and config errors (no model, no Ray)."""

import json

import pytest

from alignfactory.cli import online_overrides
from alignfactory.train.common import ConfigError
from alignfactory.train.online_dpo import load_config, load_prompts, prompt_row, select_pair


def test_best_and_worst_of_n():
    p = select_pair([0.2, 0.9, -0.5, 0.4])
    assert (p.chosen, p.rejected, p.status) == (1, 2, "pair")
    assert p.margin == pytest.approx(1.4)


def test_n_equals_two():
    assert (select_pair([0.0, 1.0]).chosen, select_pair([0.0, 1.0]).rejected) == (1, 0)
    assert (select_pair([3.0, -1.0]).chosen, select_pair([3.0, -1.0]).rejected) == (0, 1)


def test_all_equal_is_a_tie_and_skipped():
    for scores in ([1.0, 1.0], [0.0] * 8, [0.5, None, 0.5]):
        p = select_pair(scores)
        assert (p.chosen, p.rejected, p.status) == (None, None, "tie")


def test_ties_within_best_and_worst_pick_distinct_completions():
    p = select_pair([1.0, 0.0, 1.0, 0.0])
    assert (p.chosen, p.rejected, p.status) == (0, 3, "pair")
    assert p.margin == 1.0


def test_min_margin():
    assert select_pair([0.1, 0.3], min_margin=0.5).status == "low_margin"
    assert select_pair([0.1, 0.3], min_margin=0.5).margin == pytest.approx(0.2)
    assert select_pair([0.1, 0.7], min_margin=0.5).status == "pair"
    assert select_pair([0.1, 0.6], min_margin=0.5).status == "pair"  # margin == min_margin is enough


def test_unscored_completions_are_left_out():
    p = select_pair([None, 0.2, None, 0.8])
    assert (p.chosen, p.rejected) == (3, 1)
    assert select_pair([None, 0.3]).status == "unscored"
    assert select_pair([None, None]).status == "unscored"


def test_prompt_row_reads_every_factory_format():
    pref = {"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": []}
    sft = {
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ]
    }
    seed = {"instruction": "Write f", "entry_point": "f", "tests": [{"args": [1], "expected": 2}]}
    assert prompt_row(pref, "x")["prompt"] == [{"role": "user", "content": "q"}]
    assert prompt_row(sft, "x")["prompt"] == sft["messages"][:2]
    r = prompt_row(seed, "x")
    assert r["prompt"] == [{"role": "user", "content": "Write f"}] and r["entry_point"] == "f"
    with pytest.raises(ConfigError, match="f.jsonl:3"):
        prompt_row({"text": "?"}, "f.jsonl:3")


def test_load_prompts_dedupes_and_names_bad_lines(tmp_path):
    f = tmp_path / "p.jsonl"
    row = {"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": []}
    f.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    assert len(load_prompts([str(f)])) == 1
    f.write_text(json.dumps(row) + "\n{oops\n")
    with pytest.raises(ConfigError, match=r"p.jsonl:2: not JSON"):
        load_prompts([str(f)])
    with pytest.raises(ConfigError, match="not found"):
        load_prompts([str(tmp_path / "missing.jsonl")])


def test_config_errors_name_file_and_key(tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text("policy: x\nprompts: [a]\nn: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: n: .*greater than or equal to 2"):
        load_config(c)
    c.write_text("policy: x\nprompts: [a]\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(c)
    assert load_config("pipelines/train_online_dpo.yaml").n == 8


def test_cli_overrides_nest_and_parse_yaml_values():
    assert online_overrides(["--n", "2", "--scorer.kind", "math", "--use-cpu", "true"]) == {
        "n": 2,
        "scorer": {"kind": "math"},
        "use_cpu": True,
    }


@pytest.mark.parametrize("step", ["sft", "dpo"])
def test_production_profiles_carry_the_qwen2_settings(step):
    from alignfactory.train.common import parse

    # bf16 is refused at parse time on a CPU-only machine; everything else is as the file says
    _, t, _, data = parse(step, f"pipelines/train_{step}.yaml", ["--bf16", "false", "--use_cpu", "true"])
    assert (t.num_train_epochs, t.learning_rate, t.weight_decay, t.max_grad_norm) == (2, 7e-6, 0.1, 1.0)
    assert t.lr_scheduler_type.value == "cosine_with_min_lr" and t.lr_scheduler_kwargs == {"min_lr": 7e-7}
    assert t.max_length >= 8192 and t.gradient_checkpointing
    assert all(d.path == "json" and d.data_files.startswith("runs/") for d in data.datasets)
    if step == "sft":
        assert t.assistant_only_loss and t.packing and t.chat_template_path.endswith("smollm2_training.jinja")


def test_config_errors_from_trl_parser_name_the_file(tmp_path):
    from alignfactory.train.common import ConfigError, parse

    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\nuse_cpu: true\nbf16: false\nnot_a_field: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*not_a_field"):
        parse("sft", bad)
    with pytest.raises(ConfigError, match="not found"):
        parse("sft", tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown training step"):
        parse("ppo", bad)
