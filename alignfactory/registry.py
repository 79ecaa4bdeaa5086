"""Stage name -> "module:Class", resolved lazily so listing stages imports nothing heavy.

A spec may also name any importable class directly as "package.module:Class".
"""

from __future__ import annotations

import difflib
import importlib

STAGES = {
    "generate": "alignfactory.stages.synthesize.generate:Generate",
    "filter": "alignfactory.stages.assemble.filter:Filter",
    "dedup": "alignfactory.stages.curate.dedup:Dedup",
    "decontaminate": "alignfactory.stages.curate.decontaminate:Decontaminate",
    "instag": "alignfactory.stages.curate.instag:InsTag",
    "tag_normalize": "alignfactory.stages.curate.tag_normalize:TagNormalize",
    "select": "alignfactory.stages.curate.select:Select",
    "evolve": "alignfactory.stages.curate.evolve:Evolve",
    "export": "alignfactory.stages.assemble.export:Export",
    "exec_feedback": "alignfactory.stages.verify.exec_feedback:ExecFeedback",
    "autoif": "alignfactory.stages.verify.autoif:AutoIF",
    "judge": "alignfactory.stages.synthesize.judge:Judge",
    "reward": "alignfactory.stages.synthesize.reward:Reward",
    "constitution": "alignfactory.stages.synthesize.constitution:Constitution",
    "repurpose": "alignfactory.stages.synthesize.repurpose:Repurpose",
    "pairs": "alignfactory.stages.assemble.pairs:Pairs",
    "reject_sample": "alignfactory.stages.synthesize.reject_sample:RejectSample",
}


class UnknownStage(KeyError):
    pass


def resolve(name: str) -> type:
    target = STAGES.get(name, name if ":" in name else None)
    if target is None:
        close = difflib.get_close_matches(name, STAGES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownStage(f"unknown stage {name!r}{hint} (known: {', '.join(sorted(STAGES))})")
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise UnknownStage(f"stage {name!r}: cannot import {target}: {e}") from e
