"""`ray start --head` + `ray job submit --working-dir . -- python -m alignfactory.run ...` + `ray stop`."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    REPO,
    SHORT_REPLIES,
    assert_each_input_once,
    exported,
    input_lines,
    read_jsonl,
    rejected_rows,
)

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SEEDS = REPO / "pipelines" / "seeds" / "sft_seed.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    dash = free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--num-cpus",
        "2",
        "--disable-usage-stats",
        "--port",
        str(free_port()),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_job_submit_runs_the_spec(ray_head, tmp_path):
    env, address = ray_head
    out = tmp_path / "run"
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "-m",
        "alignfactory.run",
        "pipelines/sft_quick.yaml",
        "--limit",
        "6",
        "--output",
        str(out),
        "--set",
        "sampling.max_tokens=16",
        "--set",
        SHORT_REPLIES,
        "--set",
        "stages.2.params.min_chars=1",
    ]
    deadline = time.time() + 90
    while True:  # the head's job agent registers a few seconds after `ray start` returns
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        if "No available agent" not in proc.stderr + proc.stdout or time.time() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    rows = exported(out)
    assert len(rows) + len(rejected_rows(out)) == 6
    # row by row: the job read the working-dir copy Ray unpacked, so the file is the one its read
    # stage recorded (the same seed file), and the lines are the first 6 of it
    (read_shard,) = sorted((out / "stages" / "00-read").glob("shard-*.jsonl"))
    src = read_jsonl(read_shard)[1]["source"]["file"]
    assert src.endswith("pipelines/seeds/sft_seed.jsonl") and src != str(
        REPO / "pipelines/seeds/sft_seed.jsonl"
    )
    assert_each_input_once(out, [(str(Path(src).resolve()), n) for _, n in input_lines(SEEDS, 6)])
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert shutil.which("ray", path=str(BIN))
