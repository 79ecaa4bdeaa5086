"""export (corpus stage, runs in the driver): the final rows, in the formats the spec asks for, under the run dir.

    sft/         {"messages": [{"role", "content"}, ...]}                           TRL conversational LM
    preference/  {"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}  TRL preference
    qwen/        {"id", "conversations": [{"from": "system"|"user"|"assistant", "value"}]}   Qwen fine-tuning
    sharegpt/    {"id", "conversations": [{"from": "system"|"human"|"gpt", "value"}]}
    firefly/     {"kind", "input", "target"}        single-turn rows only (multi-turn ones are counted, skipped)

Each format dir holds train.{jsonl,parquet} and dataset/ (save_to_disk) as params.files asks; with
`card` also README.md, a dataset card (counts, the spec, pair statistics) whose YAML header names the
splits, so `datasets.load_dataset("<run>/sft")` loads the dir as is. params.holdout: that fraction of
rows (by a hash of the row id: the same rows on every run) goes to holdout.{jsonl,parquet} instead of
train; a preference pair follows the row that carries it.

SFT rows are rows whose messages end with an assistant turn; preference rows come from the `pairs`
column ([{"chosen", "rejected", "stage", ...}], prompt = the row's prompt). A row that gives neither
is rejected ("no_response"). Each format is written to a temp dir and renamed, so a kill leaves the
old export or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from statistics import mean, median
from typing import Literal

from pydantic import BaseModel, Field

from alignfactory import io, records
from alignfactory.stages.base import Stage

FORMATS = ("sft", "preference", "qwen", "sharegpt", "firefly")
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


def features(fmt: str):
    """Explicit column types, so that an empty export still has typed columns rather than `null`."""
    from datasets import Features, List, Value

    if fmt in ("sft", "preference"):
        turns = List({"role": Value("string"), "content": Value("string")})
        columns = ["messages"] if fmt == "sft" else ["prompt", "chosen", "rejected"]
        return Features({c: turns for c in columns})
    if fmt in ("qwen", "sharegpt"):
        return Features(
            {
                "id": Value("string"),
                "conversations": List({"from": Value("string"), "value": Value("string")}),
            }
        )
    return Features({"kind": Value("string"), "input": Value("string"), "target": Value("string")})


def is_holdout(row_id: str, fraction: float) -> bool:
    """Deterministic split: the first 8 hex digits of sha256("holdout:" + id) as a number in [0, 1)."""
    if fraction <= 0:
        return False
    return int(hashlib.sha256(f"holdout:{row_id}".encode()).hexdigest()[:8], 16) / 16**8 < fraction


def conversations(row: dict, names: dict | None = None) -> list[dict]:
    names = names or {"system": "system", "user": "user", "assistant": "assistant"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in row["messages"]]


def firefly(row: dict) -> dict | None:
    roles = [m["role"] for m in row["messages"] if m["role"] != "system"]
    if roles != ["user", "assistant"]:
        return None
    kind = (row.get("seed") or {}).get("category") or row["lineage"].get("stage") or "general"
    return {"kind": str(kind), "input": records.instruction(row), "target": records.response(row)}


class Export(Stage):
    kind = "corpus"
    in_driver = True

    class Params(BaseModel, extra="forbid"):
        formats: list[Literal["sft", "preference", "qwen", "sharegpt", "firefly"]] = Field(
            ["sft"], min_length=1
        )
        files: list[Literal["parquet", "jsonl", "datasets", "card"]] = ["parquet", "jsonl", "datasets"]
        holdout: float = Field(0.0, ge=0, lt=1)  # fraction of rows held out of train (by row id hash)

    def __call__(self, rows: list[dict]) -> list[dict]:
        fmts = self.params.formats
        out = {f: {"train": [], "holdout": []} for f in fmts}
        stats = {"rows": 0, "holdout_rows": 0, "multi_turn_skipped": 0, "pairs": []}
        for row in rows:
            answered = records.response(row) is not None and bool(set(fmts) - {"preference"})
            pairs = (row.get("pairs") or []) if "preference" in fmts else []
            if not answered and not pairs:
                self.reject(row, "no_response")
                continue
            split = "holdout" if is_holdout(row["id"], self.params.holdout) else "train"
            stats["rows"] += 1
            stats["holdout_rows"] += split == "holdout"
            if answered:
                views = {
                    "sft": lambda r: records.to_trl_sft(r),
                    "qwen": lambda r: {"id": r["id"], "conversations": conversations(r)},
                    "sharegpt": lambda r: {"id": r["id"], "conversations": conversations(r, SHAREGPT_FROM)},
                    "firefly": firefly,
                }
                for fmt in set(fmts) & set(views):
                    view = views[fmt](row)
                    if view is None:
                        stats["multi_turn_skipped"] += 1
                    else:
                        out[fmt][split].append(view)
            prompt = records.prompt_messages(row)
            for p in pairs:
                out["preference"][split].append(records.to_trl_preference(prompt, p["chosen"], p["rejected"]))
                stats["pairs"].append(p)
        stats["ties"] = sum((r.get("meta") or {}).get("pairs", {}).get("ties", 0) for r in rows)
        for fmt in fmts:
            self.write(fmt, out[fmt], stats)
        return rows

    def write(self, fmt: str, splits: dict[str, list[dict]], stats: dict) -> None:
        files = self.params.files
        target = Path(self.ctx.run_dir) / fmt
        tmp = target.with_name(f".{fmt}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        names = ["train"] + (["holdout"] if self.params.holdout > 0 else [])
        for name in names:
            trl_rows = splits[name]
            if "jsonl" in files:
                io.write_jsonl_atomic(tmp / f"{name}.jsonl", trl_rows)
            if {"parquet", "datasets"} & set(files):
                import datasets

                datasets.disable_progress_bars()
                types = features(fmt)
                ds = datasets.Dataset.from_dict({c: [r[c] for r in trl_rows] for c in types}, features=types)
                if "parquet" in files:
                    ds.to_parquet(str(tmp / f"{name}.parquet"))
                if "datasets" in files and name == "train":
                    ds.save_to_disk(str(tmp / "dataset"), num_shards=1)  # 0 shards would not load back
        if "card" in files:
            counts = {n: len(splits[n]) for n in names}
            io.write_atomic(tmp / "README.md", self.card(fmt, counts, stats).encode("utf-8"))
        old = target.with_name(f".{fmt}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    def card(self, fmt: str, counts: dict[str, int], stats: dict) -> str:
        """README.md: a YAML header naming the splits (so load_dataset reads the dir), counts, the spec
        (from the run's manifest.json when there is one) and, for preference data, pair statistics."""
        ext = "parquet" if "parquet" in self.params.files else "jsonl"
        header = ["---", "configs:", "- config_name: default", "  data_files:"]
        for name in counts:
            header += [f"  - split: {name}", f"    path: {name}.{ext}"]
        lines = header + ["---", "", f"# {fmt}", ""]
        lines += [f"- {name}: {n} rows" for name, n in counts.items()]
        lines += [f"- columns: {', '.join(features(fmt))}", f"- rows exported from the run: {stats['rows']}"]
        if fmt == "firefly" and stats["multi_turn_skipped"]:
            lines.append(f"- multi-turn rows skipped (Firefly holds one turn): {stats['multi_turn_skipped']}")
        if self.params.holdout:
            lines.append(f"- holdout: {self.params.holdout} of rows by sha256 of the row id")
        if fmt == "preference":
            lines += ["", "## Pairs", ""] + pair_stats(stats["pairs"], stats["ties"])
        manifest = Path(self.ctx.run_dir) / "manifest.json"
        if manifest.exists():
            spec = json.loads(manifest.read_text("utf-8")).get("spec")
            lines += ["", "## Spec", "", "```json", json.dumps(spec, indent=2, ensure_ascii=False), "```"]
        return "\n".join(lines) + "\n"


def pair_stats(pairs: list[dict], ties: int) -> list[str]:
    """Markdown lines: pairs per policy, chosen/rejected length ratio, score margins, ties skipped."""
    lines = [
        "| policy | pairs | mean len(chosen)/len(rejected) | median ratio | mean margin |",
        "|---|---:|---:|---:|---:|",
    ]
    by: dict[str, list[dict]] = {}
    for p in pairs:
        by.setdefault(str(p.get("policy") or p.get("stage") or "?"), []).append(p)
    for policy, ps in sorted(by.items()):
        ratios = [len(p["chosen"]) / len(p["rejected"]) for p in ps if p["rejected"]]
        margins = [p["margin"] for p in ps if isinstance(p.get("margin"), (int, float))]
        lines.append(
            f"| {policy} | {len(ps)} | {mean(ratios):.3f} | {median(ratios):.3f} | "
            f"{f'{mean(margins):.3f}' if margins else '-'} |"
            if ratios
            else f"| {policy} | {len(ps)} | - | - | - |"
        )
    lines += ["", f"- groups skipped as ties (margin below min_margin): {ties}"]
    return lines
