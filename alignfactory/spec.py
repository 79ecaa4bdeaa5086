"""YAML -> PipelineSpec. Unknown keys are errors that name their key path; each stage validates
its own Params; `--set a.b.0.c=value` edits the YAML tree before validation.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator

from alignfactory import registry
from alignfactory.cost import Budget, Price
from alignfactory.llm.base import Sampling
from alignfactory.llm.config import ModelConfig


class SpecError(ValueError):
    pass


class InputSpec(BaseModel, extra="forbid"):
    path: (
        str | list[str]
    )  # files, globs or `datasets` dirs; relative paths are relative to the spec's repo root
    max_line_bytes: int = Field(1 << 20, gt=0)

    @property
    def patterns(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


class SamplingSpec(BaseModel, extra="forbid"):
    n: int = Field(1, ge=1)
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    stop: list[str] = []
    stop_loops: int = Field(0, ge=0)  # tokens; see llm.base.Sampling.stop_loops (0 = off)

    def build(self, seed: int, **override) -> Sampling:
        fields = self.model_dump() | {k: v for k, v in override.items() if v is not None}
        return Sampling(seed=seed, **fields | {"stop": tuple(fields["stop"])})


class Resources(BaseModel, extra="forbid"):
    """How a stage runs; never part of its fingerprint."""

    batch_size: int = Field(8, ge=1)  # rows per engine call inside a worker
    concurrency: int = Field(1, ge=1)  # actors (LLM stages) or parallel tasks
    num_cpus: float = Field(1.0, gt=0)  # per actor/task; on 2-core machines keep actors <= 1 CPU
    num_gpus: float = Field(0.0, ge=0)
    # per actor/task, bytes or "1.5GiB"; None = estimated from the model and batch (alignfactory/memory.py)
    memory: int | str | None = None

    @field_validator("memory")
    @classmethod
    def _memory_size(cls, v):
        from alignfactory.memory import parse_size

        return None if v is None else parse_size(v)  # a bad size fails at load, naming the key


class StageSpec(BaseModel, extra="forbid"):
    name: str  # registry name, or "package.module:Class"
    params: dict = {}
    resources: Resources = Resources()
    model: ModelConfig | None = None  # per-stage model (a judge, say); default: the pipeline's
    sampling: SamplingSpec | None = None


class PipelineSpec(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    input: InputSpec
    output: str | None = None  # default runs/<name>
    model: ModelConfig = ModelConfig()
    sampling: SamplingSpec = SamplingSpec()
    seed: int = 0
    shard_size: int = Field(16, ge=1)  # rows per shard: the unit of parallelism and of resume
    limit: int | None = Field(None, ge=1)  # read at most this many input rows
    stages: list[StageSpec] = Field(min_length=1)
    # model path ("embedded:smollm2-135m-instruct" for the default, "*" for any) -> price per 1k tokens
    prices: dict[str, Price] = {}
    budget: Budget | None = None  # tokens and/or money: the run stops between shards once spent
    _params: list[BaseModel] = PrivateAttr(default_factory=list)  # validated per-stage Params

    def stage_params(self, i: int) -> BaseModel:
        return self._params[i]


def _format_loc(loc) -> str:
    return ".".join(str(p) for p in loc)


def apply_set(tree: dict, assignment: str) -> None:
    """`stages.2.params.n=4` -> tree["stages"][2]["params"]["n"] = 4 (value parsed as YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {assignment!r}: expected key.path=value")
    value = yaml.safe_load(raw) if raw != "" else ""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SpecError(f"--set {key}: {where}: no such list index (length {len(node)})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:  # absent, or a YAML key left empty (`model:`)
                    node[part] = {}
                node = node[part]
        else:
            raise SpecError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a mapping")


def unbool_on(node):
    """YAML 1.1 reads a bare `on:` key as True (and `off:` as False); stage params named `on` (dedup,
    select, decontaminate: what text to key by) mean the word. Mapping keys only; values stay."""
    if isinstance(node, dict):
        names = {True: "on", False: "off"}
        return {names.get(k, k) if isinstance(k, bool) else k: unbool_on(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unbool_on(v) for v in node]
    return node


def read_mapping(path: Path, missing: str = "spec file not found") -> dict:
    """A YAML file's top-level mapping; errors name the file (and line:column of a syntax error)."""
    if not path.exists():
        raise SpecError(f"{path}: {missing}")
    try:
        tree = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"{where}: YAML syntax error: {getattr(e, 'problem', e)}") from e
    if not isinstance(tree, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    return tree


def load_spec(path: str | Path, sets: list[str] = (), **cli) -> PipelineSpec:
    path = Path(path)
    tree = unbool_on(read_mapping(path))
    for assignment in sets:
        apply_set(tree, assignment)
    for key in ("limit", "output"):
        if cli.get(key) is not None:
            tree[key] = cli[key]
    model = tree.setdefault("model", {}) or {}
    tree["model"] = model
    if cli.get("model"):
        model["path"] = cli["model"]
    if cli.get("backend"):
        model["backend"] = cli["backend"]
    return validate(tree, str(path))


def validate(tree: dict, origin: str = "<spec>") -> PipelineSpec:
    try:
        spec = PipelineSpec.model_validate(tree)
    except ValidationError as e:
        raise SpecError(_errors(origin, e)) from None
    params = []
    for i, stage in enumerate(spec.stages):
        try:
            cls = registry.resolve(stage.name)
        except registry.UnknownStage as e:
            raise SpecError(f"{origin}: stages.{i}.name: {e.args[0]}") from None
        try:
            params.append(cls.Params.model_validate(stage.params))
        except ValidationError as e:
            raise SpecError(
                _errors(origin, e, prefix=f"stages.{i}.params", note=f" (stage {stage.name})")
            ) from None
    spec._params = params
    return spec


def _errors(origin: str, e: ValidationError, prefix: str = "", note: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = _format_loc(err["loc"])
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{origin}: {loc}: {msg}{note}")
    return "\n".join(lines)
