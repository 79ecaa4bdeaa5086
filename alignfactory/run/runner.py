"""Runner: a spec's steps in order, each resumed or reused from what its stage dir holds, under the
run's budget; then rejected/, manifest.json and the dataset card. The work is in the modules:
read.py (step 0), row_stages.py and corpus_stages.py (the stages), ledger.py (what was done)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from alignfactory import cost, io, storage
from alignfactory.progress import Progress, Silent
from alignfactory.run import corpus_stages, ledger, row_stages
from alignfactory.run.budget import BudgetGuard
from alignfactory.run.planning import Step, plan, prepare, segments
from alignfactory.run.read import cut_shards
from alignfactory.spec import PipelineSpec

log = logging.getLogger("alignfactory")


class Runner:
    def __init__(
        self,
        spec: PipelineSpec,
        spec_path: str | None = None,
        output: str | None = None,
        progress: Progress | None = None,
    ):
        self.spec = spec
        self.spec_path = spec_path
        self.progress = progress or Silent()
        # a local path (resolved) or a storage URL (s3://, gs://, any fsspec URL): storage.location
        self.root = storage.location(output or spec.output or Path("runs") / spec.name)
        if storage.is_local(self.root):
            self.root = self.root.resolve()
        self.steps = plan(spec, self.root)

    def run(self) -> dict:
        """The run, holding the run dir's lease (storage.acquire_lease): a second run writing the same
        dir at once is refused (LeaseHeld), a killed run's lease is taken over by its re-run."""
        self.lease = storage.acquire_lease(self.root)
        if self.lease.took_over:
            log.info("took over the lease of a run that is gone: %s", self.lease.took_over)
        try:
            return self._run()
        finally:
            self.lease.release()

    def _run(self) -> dict:
        t0 = time.perf_counter()
        prepare(self.steps)
        # counts what this run dir already spent (earlier runs too); stops between shards when spent
        self.guard = BudgetGuard(self.spec.model_dump(mode="json"), self.root)
        stopped = None
        try:
            self.read()
            self.guard.check()
            for seg in segments(self.steps):
                if all(s.done for s in seg):
                    log.info("%s: finished earlier, reused", ", ".join(s.name for s in seg))
                    continue
                if seg[0].cls.kind == "corpus":
                    self.corpus(seg[0])
                else:
                    self.row_segment(seg)
                self.lease.check()  # taken over (not refreshed within its ttl): stop writing
                self.write_manifest(time.perf_counter() - t0)
                self.guard.check()
        except cost.BudgetExceeded as e:  # clean stop: written shards stay, a re-run resumes from them
            stopped = str(e)
            log.warning("stopped: %s", stopped)
        self.collect_rejected()
        manifest = self.write_manifest(time.perf_counter() - t0, stopped)
        from alignfactory.inspect import dataset_card

        io.write_atomic(self.root / "README.md", dataset_card(self.root).encode("utf-8"))
        log.info("done in %.1f s: %s", time.perf_counter() - t0, self.root)
        return manifest

    def read(self) -> None:
        cut_shards(self.steps[0], self.spec, self.progress)

    def row_segment(self, seg: list[Step]) -> None:
        row_stages.run_segment(self.steps, seg, self.progress, self.guard)

    def corpus(self, step: Step) -> None:
        source = self.steps[step.index - 1].dir
        if corpus_stages.is_distributed(step):  # map -> combine -> apply; the driver never holds the rows
            corpus_stages.run_distributed(step, source, self.root, self.progress)
        else:
            corpus_stages.run_whole(step, source, self.root, self.spec.shard_size, self.progress, self.guard)

    def collect_rejected(self) -> None:
        ledger.collect_rejected(self.root, self.steps)

    def write_manifest(self, seconds: float, stopped: str | None = None) -> dict:
        return ledger.write_manifest(self.root, self.spec, self.spec_path, self.steps, seconds, stopped)
