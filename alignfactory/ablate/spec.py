"""The ablation YAML -> AblationSpec. Unknown keys and dangling names are errors naming the file and key.

    name: ablate_math
    model: {backend: auto, path: null}      # arm 0 (the base model), the sampler and the eval engine
    system: "..."                           # system turn of every math prompt (train rows and eval)
    problems: {train: 80, eval: 200, seed: 0}   # alignfactory.ablate.mathset; `--eval FILE` replaces eval
                                            # path: FILE instead: a seeded split of its rows (arms.split_seeds)
    runs:                                   # pipelines run on the train problems (input.path set to them)
      sampled: {pipeline: pipelines/math_data.yaml, set: {stages.0.params.n: 4}}
    data:                                   # data recipes: a named subset of a run's rows
      verified: {run: sampled, take: verified}
    training:                               # training recipes: steps from the base model, in order
      sft: [{step: sft, max_steps: 16}]
    arms:                                   # arm 0 is the base model (added when not declared)
      - {name: base}
      - {name: verified, data: verified, train: sft}
    compare: [[base, verified]]             # paired differences b - a, Holm-corrected together
    eval: {max_new_tokens: 48, batch_size: 32, pass_at_k: null}
    seeds: [0]                              # training seeds per trained arm

`take` (see arms.py): verified (one verified sample per problem, plus one (correct, incorrect) pair
from the same sampling for DPO), unverified (one random whole sample of the same problems), gold (the
seed's reference solution of the same problems), sft (the run's sft/ and preference/ output as is),
selected (the rows the run's select stage kept), random (as many rows, drawn at random from all the rows
that stage chose among: the same pool, the same responses).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from alignfactory.llm.config import ModelConfig
from alignfactory.spec import SpecError, _errors, apply_set, read_mapping

DEFAULT_CONFIGS = {
    "sft": "pipelines/train_sft_cpu.yaml",
    "dpo": "pipelines/train_dpo_cpu.yaml",
    "online-dpo": "pipelines/train_online_dpo_cpu.yaml",
    "reward": "pipelines/train_reward_cpu.yaml",
}


class Problems(BaseModel, extra="forbid"):
    train: int = Field(64, ge=1)  # generated training problems (the sampler's prompts)
    eval: int = Field(200, ge=1)  # held-out eval items
    seed: int = 0
    path: str | None = None  # seed rows from this file instead of mathset: `eval` held out, `train` the input


class RunRecipe(BaseModel, extra="forbid"):
    pipeline: str  # a pipeline spec, run by alignfactory.run on the train problems
    set: dict[str, Any] = {}  # --set overrides (key path -> value), e.g. {stages.0.params.n: 4}


class DataRecipe(BaseModel, extra="forbid"):
    run: str  # a name under runs:
    take: Literal["verified", "unverified", "gold", "sft", "selected", "random"]
    rows: int | None = Field(None, ge=1)  # at most this many problems (the same ones for every take)
    pick: Literal["random", "shortest"] = "random"  # which verified sample of a problem is the SFT row


class TrainStep(BaseModel, extra="forbid"):
    # reward: a reward model on the recipe's pairs, scored by its accuracy on held-out pairs (last step)
    step: Literal["sft", "dpo", "online-dpo", "reward"]
    config: str | None = None  # default: the cpu profile of the step (DEFAULT_CONFIGS)
    max_steps: int = Field(8, ge=1)  # optimizer steps, the same for every arm that uses the recipe
    set: dict[str, Any] = {}  # config overrides (TRL field -> value; online DPO config keys)

    @property
    def config_path(self) -> str:
        return self.config or DEFAULT_CONFIGS[self.step]


class Arm(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    data: str | None = None  # a name under data: (None with train None: the base model)
    train: str | None = None  # a name under training:


class EvalSpec(BaseModel, extra="forbid"):
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(32, ge=1)  # sequences decoded together
    pass_at_k: int | None = Field(None, ge=2)  # also k samples per item at `temperature`: pass@k
    temperature: float = Field(0.8, gt=0)
    reward_model: str | None = None  # a `trl reward` checkpoint: adds reward_mean
    judge: str | None = None  # a model ("embedded", a local dir, a hub id) for the judge stage: judge_mean
    allow_unsafe: bool = False  # code items without the sandbox's isolation (never in CI)


class AblationSpec(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig = ModelConfig()
    system: str | None = None
    problems: Problems = Problems()
    runs: dict[str, RunRecipe] = {}
    data: dict[str, DataRecipe] = {}
    training: dict[str, list[TrainStep]] = {}
    arms: list[Arm] = Field(min_length=1)
    compare: list[tuple[str, str]] = []
    eval: EvalSpec = EvalSpec()
    seeds: list[int] = Field([0], min_length=1)
    output: str | None = None  # default runs/<name>

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


def load(path: str | Path, sets: list[str] = ()) -> AblationSpec:
    """Read, apply `--set key.path=value` edits, validate; every error names `path` and the key."""
    path = Path(path)
    tree = read_mapping(path, "ablation spec not found")
    for assignment in sets:
        apply_set(tree, assignment)
    try:
        spec = AblationSpec.model_validate(tree)
    except ValidationError as e:
        raise SpecError(_errors(str(path), e)) from None
    check(spec, str(path))
    return spec


def check(spec: AblationSpec, where: str) -> None:
    """Names must resolve; arm 0 is the base model (inserted when absent); DPO needs pairs."""

    def fail(key: str, msg: str):
        raise SpecError(f"{where}: {key}: {msg}")

    for name, d in spec.data.items():
        if d.run not in spec.runs:
            fail(f"data.{name}.run", f"unknown run {d.run!r} (runs: {', '.join(spec.runs) or 'none'})")
    if spec.problems.path and not Path(spec.problems.path).is_file():
        fail("problems.path", f"seed file not found: {spec.problems.path}")
    rm = spec.eval.reward_model
    if rm and not Path(rm).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", rm):  # a hub id passes
        fail("eval.reward_model", f"reward model not found: {rm} (train one: alignfactory train reward)")
    for name, r in spec.runs.items():
        if not Path(r.pipeline).is_file():
            fail(f"runs.{name}.pipeline", f"pipeline spec not found: {r.pipeline}")
    for name, steps in spec.training.items():
        if not steps:
            fail(f"training.{name}", "no steps")
        for i, s in enumerate(steps):
            if not Path(s.config_path).is_file():
                fail(f"training.{name}.{i}.config", f"training config not found: {s.config_path}")
            if s.step == "reward" and i != len(steps) - 1:
                fail(f"training.{name}.{i}", "a reward step ends its recipe (a reward model is not a policy)")
    seen = set()
    for i, arm in enumerate(spec.arms):
        if arm.name in seen:
            fail(f"arms.{i}.name", f"duplicate arm {arm.name!r}")
        seen.add(arm.name)
        if (arm.data is None) != (arm.train is None):
            fail(f"arms.{i}", "an arm names both data and train, or neither (the base model)")
        if arm.data is not None and arm.data not in spec.data:
            fail(
                f"arms.{i}.data", f"unknown data recipe {arm.data!r} (data: {', '.join(spec.data) or 'none'})"
            )
        if arm.train is not None and arm.train not in spec.training:
            fail(
                f"arms.{i}.train",
                f"unknown training recipe {arm.train!r} ({', '.join(spec.training) or 'none'})",
            )
        if arm.data is None and i > 0:
            fail(f"arms.{i}", "only arm 0 may be the untrained base model")
        steps = {s.step for s in spec.training[arm.train]} if arm.train is not None else set()
        take = spec.data[arm.data].take if arm.data is not None else None
        if "dpo" in steps and take not in ("verified", "sft"):
            fail(f"arms.{i}", f"DPO needs (correct, incorrect) pairs: take {take!r} has none")
        if "reward" in steps and take not in ("verified", "unverified", "sft"):
            fail(f"arms.{i}", f"a reward model needs pairs: take {take!r} has none")
    if spec.arms[0].data is not None:
        spec.arms.insert(0, Arm(name="base" if "base" not in seen else "base_model"))
    names = {a.name for a in spec.arms}
    for i, (a, b) in enumerate(spec.compare):
        for x in (a, b):
            if x not in names:
                fail(f"compare.{i}", f"unknown arm {x!r} (arms: {', '.join(names)})")
        if a == b:
            fail(f"compare.{i}", "an arm compared with itself")
    if len(set(spec.seeds)) != len(spec.seeds):
        fail("seeds", "duplicate seeds")
