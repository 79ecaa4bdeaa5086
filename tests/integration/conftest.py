"""Integration fixtures: a real local Ray cluster per test module, the real embedded model."""

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(scope="module")
def local_ray():
    """Ray started in this process (2 logical CPUs, as on the CI machine), shut down after the module."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def rejected_rows(run_dir: Path) -> list[dict]:
    return [r for p in sorted((run_dir / "rejected").glob("*.jsonl")) for r in read_jsonl(p)]


def exported(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "sft" / "train.jsonl")
