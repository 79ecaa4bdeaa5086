"""Corpus stages for runner tests: dedup that sleeps in summarize or apply, so a test can kill -9
mid-stage."""

import time

from pydantic import Field

from alignfactory.stages.curate.dedup import Dedup


class SlowDedup(Dedup):
    class Params(Dedup.Params):
        apply_sleep: float = Field(0.0, ge=0)  # seconds per shard in apply
        summarize_sleep: float = Field(0.0, ge=0)  # seconds per shard in summarize

    def summarize(self, rows, shard):
        time.sleep(self.params.summarize_sleep)
        return super().summarize(rows, shard)

    def apply(self, rows, plan, shard):
        time.sleep(self.params.apply_sleep)
        return super().apply(rows, plan, shard)
