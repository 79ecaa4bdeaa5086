"""Step 0, read: the input files cut into shards of spec.shard_size rows, in the driver."""

from __future__ import annotations

import logging

from alignfactory import io
from alignfactory.progress import Progress
from alignfactory.run.ledger import succeed
from alignfactory.run.planning import Step
from alignfactory.run.shards import counts, write_shard
from alignfactory.spec import PipelineSpec

log = logging.getLogger("alignfactory")


def cut_shards(step: Step, spec: PipelineSpec, progress: Progress) -> None:
    if step.done:
        return
    progress.start(step.name)
    paths = io.expand_paths(spec.input.patterns)
    totals = {"rows_in": 0, "rows_out": 0, "rejected": 0}
    buf: list[dict] = []
    n_shards = 0

    def flush():
        nonlocal buf, n_shards
        stats = counts(buf, len(buf))
        write_shard(step.dir / f"shard-{n_shards:05d}.jsonl", buf, stats)
        for k in totals:
            totals[k] += stats[k]
        n_shards += 1
        buf = []

    limit = spec.limit
    for row in io.read_inputs(paths, spec.input.max_line_bytes):
        buf.append(row)
        if len(buf) == spec.shard_size:
            flush()
        if limit and totals["rows_in"] + len(buf) >= limit:
            break
    if buf:
        flush()
    succeed(step, totals | {"shards": n_shards})
    progress.update(step.name, rows=totals["rows_in"], shards=n_shards)
    progress.finish(step.name)
    log.info("read: %d rows (%d rejected) into %d shards", totals["rows_in"], totals["rejected"], n_shards)
