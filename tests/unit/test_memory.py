"""Each stage's memory request (alignfactory/memory.py): sizes, the model arithmetic, the spec key."""

import json
from pathlib import Path

import numpy as np
import pytest

from alignfactory import memory
from alignfactory.llm.config import ModelConfig
from alignfactory.memory import GiB, MiB, parse_size
from alignfactory.run import plan
from alignfactory.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text,expected",
    [(1234, 1234), ("512MiB", 512 * MiB), ("1.5GiB", 3 * GiB // 2), ("2G", 2 * GiB), ("100", 100)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


def test_a_bad_size_in_a_spec_names_the_key(tmp_path):
    spec = (REPO / "pipelines" / "sft_quick.yaml").read_text()
    path = tmp_path / "s.yaml"
    path.write_text(spec)
    with pytest.raises(SpecError, match=r"stages\.0\.resources\.memory.*not a memory size: 'lots'"):
        load_spec(path, ["stages.0.resources.memory=lots"])


def test_safetensors_header_gives_the_parameter_count(tmp_path):
    from safetensors.numpy import save_file

    save_file(
        {"a": np.zeros((3, 5), np.float32), "b": np.zeros((7,), np.float16)}, str(tmp_path / "m.safetensors")
    )
    assert memory.safetensors_params(tmp_path) == 3 * 5 + 7


def test_the_embedded_model_as_gguf_and_as_converted_dir_count_the_same_parameters():
    from alignfactory.llm.embedded import embedded_gguf_path, embedded_model_dir

    from_dir = memory.safetensors_params(embedded_model_dir())
    assert 130e6 < from_dir < 140e6  # SmolLM2-135M
    # the converted dir ties lm_head to the embedding as the GGUF does: one count either way
    assert memory.gguf_params(embedded_gguf_path()) == from_dir


def test_transformers_estimate_is_worker_plus_weights_plus_kv_for_the_batch():
    from alignfactory.llm.embedded import embedded_model_dir

    cfg = ModelConfig(backend="transformers", max_model_len=1024)
    need = memory.llm_need(cfg, batch_size=4, n=1, on_gpu=False)
    config = json.loads((embedded_model_dir() / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_token = config["num_hidden_layers"] * 2 * config["num_key_value_heads"] * head_dim * 4
    weights = memory.safetensors_params(embedded_model_dir()) * 4
    assert need.bytes == memory.WORKER_BASE + weights + 4 * 1024 * kv_token
    # n samples of one request are decode rows too: n=16 over batch 4 holds 16 rows
    assert memory.llm_need(cfg, batch_size=4, n=16, on_gpu=False).bytes == (
        memory.WORKER_BASE + weights + 16 * 1024 * kv_token
    )
    # measured peak USS of these actors in sft_data runs: 877 MiB; Ray Data warns below 1.25x that
    assert memory.llm_need(ModelConfig(backend="transformers"), 8, 1, False).bytes > 1.25 * 877 * MiB


def test_other_backends_and_unknown_models():
    assert memory.llm_need(ModelConfig(backend="openai", path="m"), 8, 1, False).bytes == memory.TASK_BASE
    gpu = memory.llm_need(ModelConfig(backend="vllm"), 8, 1, on_gpu=True)
    assert (
        "staged on host" in gpu.how
        and gpu.bytes < memory.llm_need(ModelConfig(backend="vllm"), 8, 1, False).bytes
    )
    hub = memory.llm_need(ModelConfig(backend="vllm", path="org/not-here-7b"), 8, 1, True)
    assert hub.bytes == memory.WORKER_BASE + memory.UNKNOWN_MODEL and "set resources.memory" in hub.how


def test_every_stage_of_the_main_job_has_a_request_and_the_spec_overrides_it(tmp_path):
    steps = plan(load_spec(REPO / "pipelines" / "sft_data.yaml"), tmp_path)
    by_name = {s.name: s.memory for s in steps}
    assert by_name["instag"].bytes > GiB and "KV cache" in by_name["instag"].how
    assert "embedder" in by_name["constitution"].how  # its relevance check embeds
    assert by_name["constitution"].bytes > by_name["generate"].bytes
    shard = 8 * memory.ROW_BYTES  # sft_data.yaml's shard_size: 8 rows
    assert (
        by_name["filter"].bytes == memory.TASK_BASE + shard and "a shard of 8 rows" in by_name["filter"].how
    )
    big = {
        s.name: s
        for s in plan(load_spec(REPO / "pipelines" / "sft_data.yaml", ["shard_size=50000"]), tmp_path)
    }
    assert big["filter"].memory.bytes == memory.TASK_BASE + 50000 * memory.ROW_BYTES
    # a distributed corpus stage's apply task: no model, but a shard of rows
    assert big["dedup"].apply_memory.bytes == memory.TASK_BASE + 50000 * memory.ROW_BYTES
    assert all(s.memory.bytes > 0 for s in steps)
    spec = load_spec(REPO / "pipelines" / "sft_data.yaml", ["stages.3.resources.memory=3GiB"])
    (over,) = [s for s in plan(spec, tmp_path) if s.index == 4]
    assert over.memory.bytes == 3 * GiB and over.memory.how == "resources.memory in the spec"
