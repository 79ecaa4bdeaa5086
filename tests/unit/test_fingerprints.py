"""The planner's fingerprints (alignfactory.run.plan), the README promise behind resume: editing a
stage's prompt template, params or seed re-runs that stage and those after it; a resources-only
change (batch_size, concurrency, num_cpus, num_gpus) re-runs nothing. No Ray, nothing executed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignfactory import registry
from alignfactory.run import plan
from alignfactory.spec import load_spec, validate

REPO = Path(__file__).resolve().parents[2]
# data pipelines only: train_* are TRL configs, ablate_* are experiments (alignfactory.ablate.spec)
PIPELINES = sorted(
    p.name for p in (REPO / "pipelines").glob("*.yaml") if not p.name.startswith(("train_", "ablate_"))
)


def spec_for(tmp_path: Path, stage: str, params: dict | None = None, resources: dict | None = None):
    seed = tmp_path / "in.jsonl"
    if not seed.exists():  # its size and mtime are in read's fingerprint
        seed.write_text(json.dumps({"instruction": "Say hi."}) + "\n")
    middle = {"name": stage, "params": params or {}, "resources": resources or {}}
    tree = {
        "name": "fp",
        "input": {"path": str(seed)},
        "model": {"backend": "transformers"},
        "stages": [{"name": "dedup"}, middle, {"name": "export"}],
    }
    return validate(tree)


def fingerprints(spec, tmp_path: Path) -> list[str]:
    return [s.fingerprint for s in plan(spec, tmp_path / "run")]


# the stages whose prompt templates go into their fingerprint; test_every_stage_reports_its_templates
# checks this list against the registry, so a stage can neither drop out silently nor go untested
TEMPLATED = [
    "autoif",
    "constitution",
    "evolve",
    "exec_feedback",
    "instag",
    "judge",
    "reject_sample",
    "repurpose",
    "select",
]


def params_for(name: str, cls: type, scratch: Path):
    """The stage's Params at their defaults, plus the fields it cannot default."""
    if name == "reward":  # model_path: a local HF directory (one with a config.json)
        model = scratch / "reward_model"
        model.mkdir(parents=True, exist_ok=True)
        (model / "config.json").write_text("{}")
        return cls.Params(model_path=str(model))
    return cls.Params()


def template_files(name: str, scratch: Path) -> list[Path]:
    cls = registry.resolve(name)
    return [Path(p).resolve() for p in cls.template_files(params_for(name, cls, scratch))]


def test_every_stage_reports_its_templates(tmp_path):
    failures, templated = [], []
    for name in sorted(registry.STAGES):
        try:
            files = template_files(name, tmp_path)
        except Exception as e:  # noqa: BLE001 - every stage must answer; name the one that cannot
            failures.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if files:
            templated.append(name)
    assert not failures, "stages whose template_files raised:\n" + "\n".join(failures)
    assert templated == TEMPLATED, f"stages declaring templates: {templated}, TEMPLATED lists {TEMPLATED}"


@pytest.mark.parametrize("stage", TEMPLATED)
def test_editing_a_template_reruns_its_stage_and_the_later_ones(stage, tmp_path, monkeypatch):
    files = template_files(stage, tmp_path)
    assert files and all(p.is_file() for p in files)
    spec = spec_for(tmp_path, stage)
    before = fingerprints(spec, tmp_path)
    real_read = Path.read_text
    for edited in files:  # the planner reads each template's text: that is the edit it must see

        def read_text(self, *a, _edited=edited, **kw):
            text = real_read(self, *a, **kw)
            return text + "\nOne more line." if Path(self).resolve() == _edited else text

        monkeypatch.setattr(Path, "read_text", read_text)
        after = fingerprints(spec, tmp_path)
        monkeypatch.setattr(Path, "read_text", real_read)
        assert after[:2] == before[:2], f"{edited}: read and dedup must be reused"
        assert after[2] != before[2] and after[3] != before[3], f"{edited}: {stage} and export must re-run"
    assert fingerprints(spec, tmp_path) == before  # the same text again: the same fingerprints


def test_choosing_another_template_file_reruns_the_stage(tmp_path):
    spec = spec_for(tmp_path, "exec_feedback")
    other = spec_for(tmp_path, "exec_feedback", {"tests_template": "prompts/code_solution.jinja"})
    a, b = fingerprints(spec, tmp_path), fingerprints(other, tmp_path)
    assert a[:2] == b[:2] and a[2] != b[2] and a[3] != b[3]


def test_params_and_seed_rerun_from_their_stage(tmp_path):
    base = fingerprints(spec_for(tmp_path, "filter", {"min_chars": 1}), tmp_path)
    changed = fingerprints(spec_for(tmp_path, "filter", {"min_chars": 2}), tmp_path)
    assert base[:2] == changed[:2] and base[2] != changed[2] and base[3] != changed[3]
    reseeded = spec_for(tmp_path, "filter", {"min_chars": 1})
    reseeded.seed = 1
    assert fingerprints(reseeded, tmp_path)[1:] != base[1:]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_resources_only_changes_keep_every_fingerprint(pipeline, tmp_path):
    path = REPO / "pipelines" / pipeline
    spec = load_spec(path)
    sets = []
    for i, _ in enumerate(spec.stages):
        sets += [
            f"stages.{i}.resources.batch_size=3",
            f"stages.{i}.resources.concurrency=5",
            f"stages.{i}.resources.num_cpus=0.25",
            f"stages.{i}.resources.num_gpus=2",
        ]
    moved = load_spec(path, sets)
    assert all(s.resources.batch_size == 3 for s in moved.stages)
    assert fingerprints(moved, tmp_path) == fingerprints(spec, tmp_path)
