"""A stage on rows, with no row lost; Ray-free. Ray workers (workers.py) and the driver call these:
an exception is isolated to the rows that cause it, and a row a stage drops is rejected, not lost."""

from __future__ import annotations

import logging
import time
from collections import Counter

from alignfactory import registry
from alignfactory.run.shards import counts
from alignfactory.stages.base import StageContext

log = logging.getLogger("alignfactory")


def build_stage(name: str, params: dict, ctx: StageContext):
    cls = registry.resolve(name)
    return cls(cls.Params.model_validate(params), ctx)


def apply_stage(stage, rows: list[dict]) -> list[dict]:
    """stage(rows), with no row lost: an exception is isolated to the rows that cause it, and an
    input row that neither comes back nor parents an output row is rejected as dropped."""
    from alignfactory.llm.base import EngineError

    try:
        out = stage(rows)
    except EngineError:
        raise
    except Exception as e:
        if len(rows) == 1:
            return [stage.reject(rows[0], f"stage_error: {type(e).__name__}: {e}")]
        log.warning("%s raised %s on a batch of %d; retrying row by row", stage.ctx.name, e, len(rows))
        out = [r for row in rows for r in apply_stage(stage, [row])]
    return account(stage, rows, out)


def account(stage, rows: list[dict], out: list[dict]) -> list[dict]:
    """Reject, as dropped, every input row that neither comes back nor parents an output row."""
    # Identical rows share an id, so count: each input needs an output row of its id, or a child.
    parents = {p for r in out for p in r["lineage"]["parents"]}
    missing = Counter(r["id"] for r in rows) - Counter(r["id"] for r in out)
    returned = {id(r) for r in out}
    for row in rows:
        if row["id"] not in parents and missing[row["id"]] > 0 and id(row) not in returned:
            missing[row["id"]] -= 1
            out.append(stage.reject(row, "dropped_by_stage"))
    return out


def run_on_shard(stage, rows: list[dict]) -> tuple[list[dict], dict]:
    """The whole shard in one stage call: LLM engines micro-batch it themselves (resources.batch_size)
    after sorting by length, and sandbox stages run all its jobs in one pool call."""
    t0, tin, tout = time.perf_counter(), stage.tokens_in, stage.tokens_out
    out = apply_stage(stage, rows)
    stats = {
        **counts(out, len(rows)),
        "tokens_in": stage.tokens_in - tin,
        "tokens_out": stage.tokens_out - tout,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return out, stats
