"""What a run has done, written down: a stage's totals from its shard headers, the _SUCCESS marker,
rejected/ and manifest.json.

    runs/<name>/stages/<i>-<stage>/_SUCCESS         all shards of the stage written, with totals
    runs/<name>/rejected/<i>-<stage>.jsonl          every dropped row, with its reason
    runs/<name>/manifest.json                       spec, code version, per stage totals, cost
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

from alignfactory import __version__, cost, io, storage
from alignfactory.run.planning import Step
from alignfactory.run.shards import SHARD_GLOB, read_header
from alignfactory.spec import PipelineSpec

log = logging.getLogger("alignfactory")


def totals(step: Step) -> dict:
    sums = {
        "rows_in": 0,
        "rows_out": 0,
        "rejected": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "seconds": 0.0,
        "load_seconds": 0.0,  # engine/model construction in workers
        "shards": 0,
    }
    nodes = set()  # Ray node ids that ran shards of this stage
    for path in step.dir.glob(SHARD_GLOB):
        stats = read_header(path)
        for k in sums:
            sums[k] += stats.get(k, 1 if k == "shards" else 0)
        if stats.get("worker", {}).get("node"):
            nodes.add(stats["worker"]["node"])
    sums["seconds"] = round(sums["seconds"], 3)
    sums["load_seconds"] = round(sums["load_seconds"], 3)
    if nodes:
        sums["nodes"] = sorted(nodes)
    return sums


def succeed(step: Step, totals: dict) -> None:
    io.write_json_atomic(step.dir / "_SUCCESS", totals)
    log.info("%s: %s", step.name, ", ".join(f"{k}={v}" for k, v in totals.items()))


def collect_rejected(root: Path, steps: list[Step]) -> None:
    """rejected/<i>-<stage>.jsonl: every dropped row, with its reason, gathered from the shards one
    shard at a time (a 10M-row stage's rejected rows need not fit in the driver)."""
    out = root / "rejected"
    out.mkdir(exist_ok=True)
    for step in steps:
        target = out / f"{step.dir.name}.jsonl"
        pieces = rejected_lines(step)
        first = next(pieces, None)
        if first is not None:
            storage.write_atomic_chunks(target, itertools.chain([first], pieces))
        elif target.exists():
            target.unlink()


# a rejected row's line holds its top-level `"reject": {...}` as json.dumps writes it (io.jsonl_bytes)
REJECT_MARK = b'"reject": {'


def rejected_lines(step: Step) -> Iterator[bytes]:
    """Per shard holding any, its rejected rows' lines as the shard has them (bytes, "\n" ends)."""
    for path in sorted(step.dir.glob(SHARD_GLOB)):
        if read_header(path).get("rejected", 1) == 0:
            continue
        lines = path.read_bytes().split(b"\n")[1:]  # line 0: the shard header
        # only lines with the mark are parsed; the parse tells a nested "reject" key from the row's
        got = b"".join(x + b"\n" for x in lines if REJECT_MARK in x and json.loads(x).get("reject"))
        if got:
            yield got


def _distributed(step: Step) -> bool:
    return step.spec is not None and getattr(step.cls, "distributed", False)


def write_manifest(
    root: Path,
    spec: PipelineSpec,
    spec_path: str | None,
    steps: list[Step],
    seconds: float,
    stopped: str | None = None,
) -> dict:
    manifest = {
        "name": spec.name,
        "spec_path": spec_path,
        "spec": spec.model_dump(mode="json"),
        "code_version": code_version(),
        "seconds": round(seconds, 3),
        "stages": [
            {
                "index": s.index,
                "name": s.name,
                "dir": str(s.dir.relative_to(root)),
                "fingerprint": s.fingerprint,
                "done": s.done,
                "memory_request": s.memory.to_dict(),  # per actor/task, what Ray scheduled by
                # a distributed corpus stage's apply tasks (the request above is its summarize's)
                **({"apply_memory_request": s.apply_memory.to_dict()} if _distributed(s) else {}),
                # not done yet (interrupted, or stopped by its budget): what its shards hold so far
                **(json.loads((s.dir / "_SUCCESS").read_text()) if s.done else totals(s)),
            }
            for s in steps
        ],
    }
    manifest["cost"] = cost.summary(manifest, root)  # per stage, per SFT row / pair
    from alignfactory.inspect import judge_consistency

    # per judge stage: comparisons judged both ways, agreeing, flipped (ties), unreadable
    manifest["judge_consistency"] = judge_consistency(root)
    if stopped:
        manifest["stopped"] = stopped
    io.write_json_atomic(root / "manifest.json", manifest)
    return manifest


def code_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
