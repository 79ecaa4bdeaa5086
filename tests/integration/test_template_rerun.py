"""README: "Changing a stage's params, templates, ... re-runs that stage and those after it;
resources (batch size, concurrency, GPUs) never do", on real files: real local Ray, the real embedded
model, a stage whose prompt template is a file the test edits (tests/integration/templated.py)."""

import pytest

from alignfactory.run import Runner
from alignfactory.spec import validate
from tests.integration.conftest import exported, write_jsonl

pytestmark = pytest.mark.slow


def spec(tmp_path, template, generate_res: dict, filter_res: dict):
    return validate(
        {
            "name": "template_rerun",
            "input": {"path": str(tmp_path / "in.jsonl")},
            "output": str(tmp_path / "run"),
            # short and whole: the reply ends at its first punctuation (a stop string, finish reason
            # "stop"), so filter keeps it; a reply cut at max_tokens would be rejected as truncated
            "sampling": {"max_tokens": 16, "temperature": 0, "stop": [".", "!", "?", ",", "\n"]},
            "shard_size": 1,
            "stages": [
                {
                    "name": "tests.integration.templated:TemplatedGenerate",
                    "params": {"system_template": str(template)},
                    "resources": generate_res,
                },
                {"name": "filter", "params": {"min_chars": 1}, "resources": filter_res},
                {"name": "export"},
            ],
        }
    )


def files(out):
    """mtime of every file the stages wrote (shards, markers) and of the export."""
    found = list((out / "stages").rglob("*")) + list((out / "sft").glob("*.jsonl"))
    return {p.relative_to(out): p.stat().st_mtime_ns for p in found if p.is_file()}


def test_resources_reuse_every_shard_and_a_template_edit_reruns_its_stage(local_ray, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Say hi."}, {"instruction": "Name a color."}])
    template = tmp_path / "system.txt"
    template.write_text("You are a terse assistant.\n")
    out = tmp_path / "run"

    Runner(spec(tmp_path, template, {"batch_size": 2, "num_cpus": 1}, {"num_cpus": 0.5})).run()
    first, first_rows = files(out), exported(out)
    assert len(first_rows) == 2 and {r["messages"][0]["content"] for r in first_rows} == {
        "You are a terse assistant."
    }

    # resources only: every shard, marker and the export stay as they are, byte for byte and mtime
    moved = spec(tmp_path, template, {"batch_size": 1, "num_cpus": 0.5}, {"num_cpus": 0.25, "concurrency": 2})
    Runner(moved).run()
    assert files(out) == first and exported(out) == first_rows

    # the template's text changes: its stage and the later ones re-run, read is reused
    template.write_text("You are a pirate.\n")
    Runner(moved).run()
    now = files(out)
    read = {p for p in first if p.parts[1] == "00-read"}
    assert read and all(now[p] == first[p] for p in read)
    for stage_dir in ("01-templatedgenerate", "02-filter"):
        shards = {p for p in first if p.parts[1] == stage_dir and p.name.startswith("shard-")}
        assert len(shards) == 2 and all(now[p] != first[p] for p in shards), stage_dir
    rows = exported(out)
    assert len(rows) == 2 and {r["messages"][0]["content"] for r in rows} == {"You are a pirate."}
