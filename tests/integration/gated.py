"""Stages that hold their work at a gate, so a test can kill a node at an exact moment: the first
PASSES calls go through, every later one waits until the test opens the gate. A waiting call leaves
`<gate>/waiting-<pid>`: the test knows which worker process (so which node) holds a shard. With the
gate opened before the run, they are the stages they extend."""

import os
import time
from pathlib import Path

from alignfactory.stages.curate.dedup import Dedup
from alignfactory.stages.synthesize.generate import Generate

# Two, not one: when the driver wrote the shards, its Ray Data iterator (iter_rows, prefetch_batches=1)
# handed a finished shard over only once the next one was finished too, so the first shard was written
# when the second was done. Workers write their shards now; the tests still count on two passing.
PASSES = 2


def wait_at_gate(gate: str) -> None:
    """The first PASSES callers of the run go through; a later one waits for `<gate>/open`."""
    where = Path(gate)
    if (where / "open").exists():
        return
    for i in range(PASSES):
        try:
            os.close(os.open(where / f"passed-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return
        except FileExistsError:
            pass
    (where / f"waiting-{os.getpid()}").touch()
    while not (where / "open").exists():
        time.sleep(0.05)


class GatedGenerate(Generate):
    class Params(Generate.Params):
        gate: str  # a directory; the test creates <gate>/open to let the held shards go

    def __call__(self, rows):
        wait_at_gate(self.params.gate)
        return super().__call__(rows)


class GatedDedup(Dedup):
    """Dedup whose apply phase (one call per shard, after the plan is made) waits at the gate."""

    class Params(Dedup.Params):
        gate: str

    def apply(self, rows, plan, shard):
        wait_at_gate(self.params.gate)
        return super().apply(rows, plan, shard)
