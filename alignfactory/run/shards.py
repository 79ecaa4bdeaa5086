"""A shard file: the unit every stage reads, writes and resumes by.

    runs/<name>/stages/00-read/shard-00000.jsonl   first line {"_shard": stats}, then rows (kept and rejected)

A stage's shard i is written whole and atomically, so it either exists, finished, or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignfactory import io

SHARD_GLOB = "shard-*.jsonl"


def write_shard(path: Path, rows: list[dict], stats: dict, tag: int | str | None = None) -> None:
    io.write_atomic(path, io.jsonl_bytes([{"_shard": stats}] + rows), tag)


def read_header(path: Path) -> dict:
    """A shard's counts and timings (its first line), without reading its rows."""
    with path.open(encoding="utf-8") as f:
        return json.loads(f.readline())["_shard"]


def read_shard(path: Path) -> tuple[list[dict], dict]:
    lines = io.read_jsonl(path)
    return lines[1:], lines[0]["_shard"]


def kept(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r.get("reject")]


def counts(rows: list[dict], rows_in: int) -> dict:
    """A shard header's row counts: rows_out kept, the rest rejected."""
    good = len(kept(rows))
    return {"rows_in": rows_in, "rows_out": good, "rejected": len(rows) - good}


class NotShared(RuntimeError):
    """A worker wrote a shard the driver cannot see: the run dir is not on storage every node sees."""


def check_written(path: Path, stats: dict) -> None:
    """A shard a worker reported written must be visible here: a run dir on one node's local disk
    would otherwise lose the rows other nodes wrote, without a word."""
    if not path.exists():
        where = (stats.get("worker") or {}).get("node") or "another node"
        raise NotShared(
            f"{path}: written by a worker on node {where} but not visible to the driver; give --output "
            "a place every node sees (a shared filesystem, or s3:// / gs://)"
        )
