"""The driver's side of a segment of consecutive row stages: one Ray Data pipeline from_items(shards)
-> map_batches per stage (ray_plumbing.row_dataset). An item names a shard and where its rows are;
the stage it starts at reads them there, and each stage's worker writes its output shard itself,
atomically, so a kill -9 loses only the shards in flight and a re-run sends only the shards not yet
written. The driver keeps the ledger: it reads shard headers and gets each shard's stats, never rows."""

from __future__ import annotations

import json
import logging
import os

from alignfactory.progress import Progress
from alignfactory.run.budget import BudgetGuard
from alignfactory.run.ledger import succeed, totals
from alignfactory.run.planning import Step
from alignfactory.run.ray_plumbing import row_dataset
from alignfactory.run.shards import SHARD_GLOB, check_written, counts, read_header, write_shard

log = logging.getLogger("alignfactory")


def run_segment(steps: list[Step], seg: list[Step], progress: Progress, guard: BudgetGuard) -> None:
    first, last = seg[0].index, seg[-1].index
    source = steps[first - 1].dir
    items, sizes = [], []  # sizes: rows each item brings to the stage it starts at
    for path in sorted(source.glob(SHARD_GLOB)):
        start = first
        while start <= last and (steps[start].dir / path.name).exists():
            start += 1
        if start > last:
            continue
        given = steps[start - 1].dir / path.name
        n = read_header(given)["rows_out"]
        if not n:  # nothing left to process: the driver writes the empty outputs itself
            for step in seg[start - first :]:
                write_shard(step.dir / path.name, [], counts([], 0))
            continue
        sizes.append(n)
        item = {"source": str(given), "outputs": {}}
        items.append({"shard": path.name, "start": start, "payload": json.dumps(item).encode()})
    names = ", ".join(s.name for s in seg)
    if items:
        log.info("%s: %d shards to run", names, len(items))
        for step in seg:  # a stage's total rows are known when all its shards start at it
            mine = [(it["start"], n) for it, n in zip(items, sizes, strict=True) if it["start"] <= step.index]
            known = all(start == step.index for start, _ in mine)
            total = sum(n for _, n in mine) if known else None
            progress.start(step.name, total, len(mine), llm=step.cls.uses_llm)
        ds = row_dataset(items, seg, tag=os.getpid())
        for done, out in enumerate(ds.iter_rows(), 1):
            item = json.loads(out["payload"])  # the shard's stats per stage; its workers wrote the shards
            for index, stats in sorted(item["outputs"].items(), key=lambda kv: int(kv[0])):
                step = steps[int(index)]
                check_written(step.dir / out["shard"], stats)
                guard.add(step.index, stats)
                progress.update(step.name, stats["rows_in"], stats.get("tokens_out", 0))
            log.info("%s: shard %s written (%d/%d)", names, out["shard"], done, len(items))
            guard.check()  # between shards: what is written stays, in-flight shards are dropped
        for step in seg:
            progress.finish(step.name)
    for step in seg:
        succeed(step, totals(step))
