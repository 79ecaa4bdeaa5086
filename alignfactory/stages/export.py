"""export (corpus stage, runs in the driver): the final rows in TRL's formats under the run dir.

    sft/train.parquet, sft/train.jsonl, sft/dataset/   (datasets.save_to_disk)  {"messages": [...]}

Rows without an assistant turn are rejected ("no_response"): SFT needs a target.
Files are written to a temp dir and renamed, so a kill leaves the old export or the new one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from alignfactory import io, records
from alignfactory.stages.base import Stage


class Export(Stage):
    kind = "corpus"
    in_driver = True

    class Params(BaseModel, extra="forbid"):
        format: Literal["sft"] = "sft"
        files: list[Literal["parquet", "jsonl", "datasets"]] = ["parquet", "jsonl", "datasets"]

    def __call__(self, rows: list[dict]) -> list[dict]:
        keep = []
        for row in rows:
            if records.response(row) is None:
                self.reject(row, "no_response")
            else:
                keep.append(records.to_trl_sft(row))
        self.write(keep)
        return rows

    def write(self, trl_rows: list[dict]) -> None:
        out = Path(self.ctx.run_dir) / self.params.format
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if "jsonl" in self.params.files:
            io.write_jsonl_atomic(tmp / "train.jsonl", trl_rows)
        if "parquet" in self.params.files or "datasets" in self.params.files:
            import datasets

            ds = (
                datasets.Dataset.from_list(trl_rows)
                if trl_rows
                else datasets.Dataset.from_dict({"messages": []})
            )
            if "parquet" in self.params.files:
                ds.to_parquet(str(tmp / "train.parquet"))
            if "datasets" in self.params.files:
                ds.save_to_disk(str(tmp / "dataset"))
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
