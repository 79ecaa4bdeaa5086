"""export (corpus stage, runs in the driver): the final rows in TRL's formats under the run dir.

    sft/train.{jsonl,parquet}, sft/dataset/          {"messages": [...]}                    conversational LM
    preference/train.{jsonl,parquet}, .../dataset/   {"prompt": [...], "chosen": [...], "rejected": [...]}

SFT rows are rows whose messages end with an assistant turn; preference rows come from the `pairs`
column that verifying stages add ([{"chosen", "rejected", "stage", ...}], prompt = the row's prompt).
A row that gives neither is rejected ("no_response"). Each format is written to a temp dir and
renamed, so a kill leaves the old export or the new one, never half of one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from alignfactory import io, records
from alignfactory.stages.base import Stage


def features(fmt: str):
    """Explicit column types, so that an empty export still has typed columns rather than `null`."""
    from datasets import Features, List, Value

    turns = List({"role": Value("string"), "content": Value("string")})
    columns = ["messages"] if fmt == "sft" else ["prompt", "chosen", "rejected"]
    return Features({c: turns for c in columns})


class Export(Stage):
    kind = "corpus"
    in_driver = True

    class Params(BaseModel, extra="forbid"):
        formats: list[Literal["sft", "preference"]] = Field(["sft"], min_length=1)
        files: list[Literal["parquet", "jsonl", "datasets"]] = ["parquet", "jsonl", "datasets"]

    def __call__(self, rows: list[dict]) -> list[dict]:
        out = {"sft": [], "preference": []}
        for row in rows:
            sft = "sft" in self.params.formats and records.response(row) is not None
            pairs = (row.get("pairs") or []) if "preference" in self.params.formats else []
            if sft:
                out["sft"].append(records.to_trl_sft(row))
            prompt = records.prompt_messages(row)
            out["preference"] += [
                records.to_trl_preference(prompt, p["chosen"], p["rejected"]) for p in pairs
            ]
            if not sft and not pairs:
                self.reject(row, "no_response")
        for fmt in self.params.formats:
            self.write(fmt, out[fmt])
        return rows

    def write(self, fmt: str, trl_rows: list[dict]) -> None:
        target = Path(self.ctx.run_dir) / fmt
        tmp = target.with_name(f".{fmt}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if "jsonl" in self.params.files:
            io.write_jsonl_atomic(tmp / "train.jsonl", trl_rows)
        if {"parquet", "datasets"} & set(self.params.files):
            import datasets

            datasets.disable_progress_bars()
            types = features(fmt)
            ds = datasets.Dataset.from_dict({c: [r[c] for r in trl_rows] for c in types}, features=types)
            if "parquet" in self.params.files:
                ds.to_parquet(str(tmp / "train.parquet"))
            if "datasets" in self.params.files:
                ds.save_to_disk(str(tmp / "dataset"), num_shards=1)  # 0 shards would not load back
        old = target.with_name(f".{fmt}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
