"""The main job as a user runs it: `python -m alignfactory.run pipelines/sft_data.yaml --limit K`, the
shipped spec with nothing else changed, into its default output directory runs/sft_data (the one
pipelines/train_sft.yaml reads). Made once per session and shared by every module that reads it
(test_main_job, test_sft_data, test_notebooks, test_report_browser): a finished run with the same
limit is read as it is, an interrupted one resumes."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import REPO, finish_run, input_lines, start_run

SPEC = REPO / "pipelines" / "sft_data.yaml"
SEEDS = REPO / "pipelines" / "seeds" / "sft_seed.jsonl"
OUT = REPO / "runs" / "sft_data"
LIMIT = 16  # input lines read; `make run` reads the spec's 48
OUTPUT: dict[str, str] = {}  # the CLI's console output, when this session ran it


def finished(out: Path, limit: int) -> bool:
    manifest = out / "manifest.json"
    if not manifest.exists():
        return False
    m = json.loads(manifest.read_text())
    return m["spec"].get("limit") == limit and all(s["done"] for s in m["stages"])


def main_job() -> Path:
    """runs/sft_data once the shipped spec has run to the end with --limit LIMIT (runs it if needed)."""
    if not finished(OUT, LIMIT):
        OUTPUT["console"] = finish_run(start_run([str(SPEC), "--limit", str(LIMIT)]), timeout=1800)
    return OUT


def main_job_lines() -> list[tuple[str, int]]:
    """(file, line) of every input line the main job read."""
    return input_lines(SEEDS, LIMIT)
