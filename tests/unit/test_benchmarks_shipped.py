"""pipelines/benchmarks/: every file the README lists exists with its sha256, row count and fields,
every shipped file is listed, each licence file named is there, and the decontaminate stage loads
each file through the README's own spec entries and catches its first item pasted into a request."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.decontaminate import Decontaminate

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "pipelines" / "benchmarks"
README = (SHIPPED / "README.md").read_text("utf-8")
# | `file.jsonl` | rows | `field`, `field` | `sha256` |
TABLE = re.compile(r"^\| `([^`]+)` \| (\d+) \| (.+?) \| `([0-9a-f]{64})` \|$", re.M)
SPEC = re.compile(r"^\s*- (\{path: pipelines/benchmarks/.+\})$", re.M)  # the spec example's entries


def listed() -> dict[str, dict]:
    """file name -> {"rows", "fields", "sha256"} from the README's Shipped table."""
    out = {}
    for name, rows, fields, digest in TABLE.findall(README):
        out[name] = {"rows": int(rows), "fields": re.findall(r"`([^`]+)`", fields), "sha256": digest}
    return out


def spec_entries() -> list[dict]:
    return [yaml.safe_load(m) for m in SPEC.findall(README)]


def test_readme_lists_every_shipped_file_and_each_matches_its_row():
    table = listed()
    assert len(table) >= 3, f"README table lists {sorted(table)}"
    on_disk = {p.name for p in SHIPPED.iterdir() if p.suffix in (".jsonl", ".json", ".parquet", ".gz")}
    assert on_disk == set(table), (
        f"shipped but unlisted: {on_disk - set(table)}; listed, missing: {set(table) - on_disk}"
    )
    for name, want in table.items():
        raw = (SHIPPED / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == want["sha256"], f"{name}: sha256 differs from the README"
        rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        assert len(rows) == want["rows"], f"{name}: {len(rows)} rows, README says {want['rows']}"
        keys = {tuple(r) for r in rows}
        assert keys == {tuple(want["fields"])}, f"{name}: fields {keys} != README {want['fields']}"


def test_licence_files_named_in_the_readme_exist():
    named = set(re.findall(r"`(LICENSE-[^`]+)`", README))
    assert {"LICENSE-HumanEval.txt", "LICENSE-GSM8K.txt", "LICENSE-Apache-2.0.txt"} <= named
    for name in named:
        assert (SHIPPED / name).is_file(), f"README names {name}, not shipped"
    assert "Apache License" in (SHIPPED / "LICENSE-Apache-2.0.txt").read_text("utf-8")
    assert "Copyright (c) 2021 OpenAI" in (SHIPPED / "LICENSE-GSM8K.txt").read_text("utf-8")


@pytest.mark.parametrize("entry", spec_entries(), ids=lambda e: Path(e["path"]).name)
def test_decontaminate_loads_each_file_by_the_readme_entry(entry, monkeypatch):
    monkeypatch.chdir(ROOT)  # entries are relative to the repository root, as in a spec
    want = listed()[Path(entry["path"]).name]
    assert entry["field"] in want["fields"] and entry.get("answer_field", entry["field"]) in want["fields"]
    stage = Decontaminate(Decontaminate.Params(benchmarks=[entry]), StageContext("decontaminate", 6))
    plan = stage.combine([stage.summarize([], 0)])
    (f,) = plan["check"]["files"]
    assert f["items"] == want["rows"] and f["sha256"] == want["sha256"]
    assert f["texts_indexed"] >= want["rows"] * 0.9, f  # nearly every prompt long enough to index
    first = json.loads((ROOT / entry["path"]).read_text("utf-8").splitlines()[0])[entry["field"]]
    row = records.new_row([{"role": "user", "content": "Please help with this:\n" + first}], {"line": 1})
    out = stage([row])
    assert out[0]["reject"]["reason"].endswith(f"{Path(entry['path']).name} line 1 ({entry['field']})")


def test_spec_entries_cover_every_listed_file():
    assert {Path(e["path"]).name for e in spec_entries()} == set(listed())
