"""The budget a spec may set (`budget: {tokens, money}`, priced as in alignfactory.cost), kept
between shards: a run stops cleanly once it has spent it, and resumes with a bigger one."""

from __future__ import annotations

from pathlib import Path

from alignfactory.cost import Budget, BudgetExceeded, money, price_of, stage_models
from alignfactory.run.shards import SHARD_GLOB, read_header
from alignfactory.storage import location


class BudgetGuard:
    """Counts what the run directory has spent and stops the run between shards once the budget is.

    Built after stale stage dirs are removed: it starts from every shard already written (earlier
    runs included), then add() counts each new shard and check() raises BudgetExceeded."""

    def __init__(self, spec: dict, run_dir: str | Path):
        budget = spec.get("budget")
        self.budget = Budget.model_validate(budget) if budget else None
        self.models, self.prices = stage_models(spec), spec.get("prices") or {}
        self.tokens, self.money = 0, 0.0
        for d in sorted((location(run_dir) / "stages").glob("[0-9]*-*")):
            index = int(d.name.split("-", 1)[0])
            for shard in sorted(d.glob(SHARD_GLOB)):
                self.add(index, read_header(shard))

    def add(self, index: int, stats: dict) -> None:
        tin, tout = int(stats.get("tokens_in", 0)), int(stats.get("tokens_out", 0))
        self.tokens += tin + tout
        if index:
            self.money += money(price_of(self.prices, self.models.get(index, "")), tin, tout)

    def exceeded(self) -> str | None:
        b = self.budget
        if b is None:
            return None
        if b.tokens is not None and self.tokens >= b.tokens:
            return f"token budget spent: {self.tokens} >= budget.tokens {b.tokens}"
        if b.money is not None and self.money >= b.money:
            return f"money budget spent: {self.money:.4f} >= budget.money {b.money}"
        return None

    def check(self) -> None:
        why = self.exceeded()
        if why:
            raise BudgetExceeded(
                f"{why}; the shards written so far are kept: run again with a bigger budget "
                "(e.g. --set budget.tokens=N) to resume"
            )
