"""dedup (corpus stage): exact duplicates by a hash of normalized text; the first occurrence in
input order stays, later ones are rejected naming the id they duplicate."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Literal

from pydantic import BaseModel

from alignfactory import records
from alignfactory.stages.base import Stage

SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC (full-width -> ASCII forms), case-folded, whitespace collapsed."""
    return SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class Dedup(Stage):
    kind = "corpus"

    class Params(BaseModel, extra="forbid"):
        on: Literal["instruction", "conversation"] = "instruction"

    def key(self, row: dict) -> str:
        if self.params.on == "instruction":
            text = normalize(records.instruction(row))
        else:
            text = "\x1e".join(f"{m['role']}\x1f{normalize(m['content'])}" for m in row["messages"])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __call__(self, rows: list[dict]) -> list[dict]:
        first: dict[str, str] = {}
        for row in rows:
            k = self.key(row)
            if k in first:
                self.meta(row)["duplicate_of"] = first[k]
                self.reject(row, f"duplicate of {first[k]}")
            else:
                first[k] = row["id"]
        return rows
