"""decontaminate (corpus stage): reject rows that overlap benchmark items the user lists.

Follows the n-gram overlap test of GPT-3 (Brown et al. 2020, appendix C) and Qwen2's report: a row
is contaminated when it shares at least `min_matches` n-grams (13 by default) with one benchmark
item, after NFKC + case folding. Word n-grams for space-delimited text; character n-grams for
Chinese/Japanese (a benchmark item written in CJK is indexed by characters; a row is looked up both
ways, so mixed text matches either). An item shorter than n units is matched as a whole (its full
unit sequence inside the row) when it has at least `min_item_tokens` units; shorter items are too
generic to judge and are skipped (counted in the log). Optional: embedding cosine between the row's
instruction and each benchmark prompt at or above `embedding` (all-MiniLM-L6-v2 by default).

    benchmarks: [{path: evals/gsm8k_test.jsonl, field: question, answer_field: answer},
                 {path: evals/ceval.parquet, field: prompt}]

Rejected rows name the file and item: "contaminated: 14 13-grams shared with gsm8k_test.jsonl line 12
(question)". pipelines/benchmarks/ ships the benchmark files the project may carry (their README says
what each is, its licence and sha256); with an empty list the stage passes every row and logs that
nothing was checked.

What is checked (`on`): "conversation" (every turn, the default), "instruction" (every user turn:
a multi-turn prompt is checked whole, not only its last turn), "response" (the final assistant
turn and both sides of every pair: place the stage after the last stage that writes them; a row with
none there is rejected `unchecked: no response`, since a check that cannot read its text must not
pass the row). "conversation" includes the pair sides too. A spec can
hold the stage twice: prompts after evolve, responses after the last generative stage.

The plan records what was checked (`plan["check"]`: each file's sha256, items and texts indexed,
n-gram sizes, rows checked and matched); `statement(run_dir)` turns it into the dataset card's
contamination statement, per decontaminate stage of the run.

Distributed: summarize(shard) builds the index once per worker process (benchmarks are small next to
the corpus) and returns only the matches; combine gathers them; apply marks the rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from alignfactory import records
from alignfactory.stages.base import CorpusStage
from alignfactory.stages.curate.dedup import CJK, WORD, normalize
from alignfactory.storage import location

log = logging.getLogger("alignfactory")
SUFFIXES = (".jsonl", ".json", ".parquet")


class Benchmark(BaseModel, extra="forbid"):
    path: str  # JSONL (one object a line), a JSON array, or Parquet
    field: str = "prompt"  # the prompt/question text
    answer_field: str | None = None  # optional reference answer, also indexed
    name: str | None = None  # shown in reasons; default: the file name

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str) -> str:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"benchmark file not found: {path} (cwd {Path.cwd()})")
        if not path.endswith(SUFFIXES):
            raise ValueError(f"benchmark file {path}: expected one of {', '.join(SUFFIXES)}")
        return path

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


def char_units(text: str) -> list[str]:
    return [c for c in text if c.isalnum()]


def grams(units: list[str], n: int, joiner: str) -> set[str]:
    return {joiner.join(units[i : i + n]) for i in range(len(units) - n + 1)}


class Decontaminate(CorpusStage):
    class Params(BaseModel, extra="forbid"):
        benchmarks: list[Benchmark] = []
        ngram: int = Field(13, ge=1)  # words, for space-delimited text
        char_ngram: int = Field(13, ge=1)  # characters, for CJK text
        min_matches: int = Field(1, ge=1)  # shared n-grams with one item that make a row contaminated
        min_item_tokens: int = Field(8, ge=1)  # shorter items are skipped; shorter than n: whole-item match
        on: Literal["conversation", "instruction", "response"] = "conversation"  # row text checked
        embedding: float | None = Field(None, gt=0, le=1)  # cosine threshold; None = n-grams only
        embedder: str | None = None  # local sentence-transformers dir; None = all-MiniLM-L6-v2

        @model_validator(mode="before")
        @classmethod
        def _paths_as_strings(cls, data):
            if isinstance(data, dict) and isinstance(data.get("benchmarks"), list):
                data = dict(data)
                data["benchmarks"] = [{"path": b} if isinstance(b, str) else b for b in data["benchmarks"]]
            return data

    requires = {"messages": "a conversation"}
    adds = ("reject", "meta.decontaminate")

    @staticmethod
    def uses_model(params) -> bool:
        return params.embedding is not None

    @classmethod
    def data_files(cls, params) -> list[str]:
        """Benchmark files: their size and mtime go into the stage fingerprint."""
        return [b.path for b in params.benchmarks]

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self._index = None
        self._embedder = None

    # -- benchmark index (built lazily, once per worker)

    def items(self, bench: Benchmark):
        """(where, text) for each prompt (and answer) of a benchmark file; bad rows raise naming file:line."""
        path = Path(bench.path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            cols = [bench.field] + ([bench.answer_field] if bench.answer_field else [])
            try:
                table = pq.read_table(path, columns=cols).to_pylist()
            except (KeyError, ValueError) as e:
                raise ValueError(f"{path}: cannot read columns {cols}: {e}") from e
            found = ((f"row {i}", obj) for i, obj in enumerate(table))
        elif path.suffix == ".json":
            found = ((f"item {i}", obj) for i, obj in enumerate(json.loads(path.read_text("utf-8"))))
        else:
            with open(path, encoding="utf-8") as f:
                lines = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
            found = ((f"line {i}", _json_line(path, i, line)) for i, line in lines)
        for where, obj in found:
            for key in filter(None, (bench.field, bench.answer_field)):
                value = obj.get(key) if isinstance(obj, dict) else None
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{path}: {where}: field {key!r} is missing or not a non-empty string")
                yield where, key, value

    def index(self) -> dict:
        if self._index is not None:
            return self._index
        p = self.params
        table: dict[str, int] = {}  # n-gram -> item number (first item that has it)
        short: dict[tuple[int, str], dict[str, int]] = {}  # (length, joiner) -> whole item -> number
        items: list[dict] = []  # number -> {"file", "item", "field"}
        prompts: list[str] = []
        skipped = 0
        for bench in p.benchmarks:
            for where, key, text in self.items(bench):
                number = len(items)
                items.append({"benchmark": bench.label, "item": where, "field": key})
                if key == bench.field:
                    prompts.append(text)
                else:
                    prompts.append("")
                norm = normalize(text)
                cjk = bool(CJK.search(norm))
                units, joiner, n = (
                    (char_units(norm), "", p.char_ngram) if cjk else (WORD.findall(norm), " ", p.ngram)
                )
                if len(units) < p.min_item_tokens:
                    skipped += 1
                elif len(units) < n:
                    short.setdefault((len(units), joiner), {}).setdefault(joiner.join(units), number)
                else:
                    for g in grams(units, n, joiner):
                        table.setdefault(g, number)
        if skipped:
            log.warning(
                "decontaminate: %d benchmark texts shorter than %d units skipped", skipped, p.min_item_tokens
            )
        self._index = {"grams": table, "short": short, "items": items, "prompts": prompts}
        if p.embedding is not None:
            keep = [i for i, t in enumerate(prompts) if t]
            self._index["emb_items"] = np.array(keep, dtype=np.int64)
            self._index["emb"] = self.embedder().encode([prompts[i] for i in keep])
        return self._index

    def embedder(self):
        if self._embedder is None:
            import torch

            from alignfactory.llm.embed import Embedder

            device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU only where Ray gave one
            self._embedder = Embedder(self.params.embedder, device=device)
        return self._embedder

    # -- matching

    def text(self, row: dict) -> str | None:
        """The row text `on` selects; None when a response check finds nothing to read. Responses and
        conversations include both sides of every pair (they become training targets too)."""
        if self.params.on == "instruction":  # every user turn: a multi-turn prompt is checked whole
            return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")
        sides = [p[k] for p in row.get("pairs") or [] for k in ("chosen", "rejected") if p.get(k)]
        if self.params.on == "response":
            texts = [t for t in [records.response(row), *sides] if t]
            return "\n".join(texts) if texts else None
        return "\n".join([m["content"] for m in row["messages"]] + sides)

    def describe(self) -> list[dict]:
        """What each benchmark file holds, for the contamination statement: its sha256 (of the bytes
        read), items (objects), texts indexed (prompts + answers with at least min_item_tokens units)
        and texts skipped as too short."""
        p, out = self.params, []
        for bench in p.benchmarks:
            where, indexed, short = set(), 0, 0
            for item, _, text in self.items(bench):
                where.add(item)
                norm = normalize(text)
                n_units = len(char_units(norm) if CJK.search(norm) else WORD.findall(norm))
                short += n_units < p.min_item_tokens
                indexed += n_units >= p.min_item_tokens
            digest = hashlib.sha256(Path(bench.path).read_bytes()).hexdigest()
            fields = [f for f in (bench.field, bench.answer_field) if f]
            out.append(
                {"name": bench.label, "path": bench.path, "sha256": digest, "fields": fields}
                | {"items": len(where), "texts_indexed": indexed, "texts_skipped_short": short}
            )
        return out

    def ngram_match(self, text: str) -> dict | None:
        p, idx = self.params, self.index()
        norm = normalize(text)
        views = [(WORD.findall(norm), " ", p.ngram)]
        if CJK.search(norm):
            views.append((char_units(norm), "", p.char_ngram))
        hits: dict[int, int] = {}
        example: dict[int, tuple[str, str]] = {}  # item -> (an overlapping n-gram, what kind)
        for units, joiner, n in views:
            unit = "word" if joiner else "char"
            for g in grams(units, n, joiner):
                item = idx["grams"].get(g)
                if item is not None:
                    hits[item] = hits.get(item, 0) + 1
                    example.setdefault(item, (g, f"{n}-{unit} n-grams"))
            for (length, j), wholes in idx["short"].items():
                if j != joiner:
                    continue
                for g in grams(units, length, joiner):
                    if g in wholes:  # a short item, whole: counts as min_matches on its own
                        hits[wholes[g]] = hits.get(wholes[g], 0) + p.min_matches
                        example.setdefault(wholes[g], (g, f"whole item ({length} {unit}s)"))
        if not hits:
            return None
        item, count = max(hits.items(), key=lambda kv: (kv[1], -kv[0]))
        if count < p.min_matches:
            return None
        gram, kind = example[item]
        return idx["items"][item] | {"matches": count, "ngram": gram, "kind": kind}

    # -- map -> combine -> apply

    def summarize(self, rows: list[dict], shard: int) -> dict:
        """{"rows": rows seen, "hits": [(position, match)]}: a match is a benchmark hit, or (on:
        response) {"method": "missing"} for a row with no response to check."""
        if not self.params.benchmarks:
            return {"rows": len(rows), "hits": []}
        texts = [self.text(r) for r in rows]
        found = {}
        for pos, (row, text) in enumerate(zip(rows, texts, strict=True)):
            if text is None:
                found[pos] = {"id": row["id"], "method": "missing"}
                continue
            hit = self.ngram_match(text)
            if hit:
                found[pos] = hit | {"id": row["id"], "method": "ngram"}
        checkable = [pos for pos, t in enumerate(texts) if t is not None]
        if self.params.embedding is not None and checkable:
            idx = self.index()
            if len(idx["emb_items"]):
                vecs = self.embedder().encode([texts[pos] for pos in checkable])
                sims = vecs @ idx["emb"].T  # (checkable rows, prompts) cosine
                best = sims.argmax(1)
                for j in np.flatnonzero(sims.max(1) >= self.params.embedding - 1e-6).tolist():
                    pos = checkable[j]
                    if pos not in found:
                        item = int(idx["emb_items"][best[j]])
                        found[pos] = idx["items"][item] | {
                            "id": rows[pos]["id"],
                            "method": "embedding",
                            "cosine": float(sims[j, best[j]]),
                        }
        return {"rows": len(rows), "hits": sorted(found.items())}

    def combine(self, summaries: list) -> dict:
        p = self.params
        if not p.benchmarks:
            log.warning("decontaminate: no benchmark files listed (params.benchmarks); no row was checked")
        shards = {i: dict(s["hits"]) for i, s in enumerate(summaries) if s["hits"]}
        hits = [h for s in summaries for _, h in s["hits"]]
        check = {
            "on": p.on,
            "ngram": p.ngram,
            "char_ngram": p.char_ngram,
            "min_matches": p.min_matches,
            "embedding": p.embedding,
            "files": self.describe(),
            "rows_checked": sum(s["rows"] for s in summaries) if p.benchmarks else 0,
            "rows_contaminated": sum(h["method"] != "missing" for h in hits),
            "rows_unchecked": sum(h["method"] == "missing" for h in hits),
        }
        return {"shards": shards, "benchmarks": [b.label for b in p.benchmarks], "check": check}

    def touched(self, plan: dict, shard: int) -> list[int]:
        return sorted(plan["shards"].get(shard, {}))

    def apply(self, rows: list[dict], plan: dict, shard: int) -> list[dict]:
        for pos, hit in plan["shards"].get(shard, {}).items():
            row = rows[pos]
            if row["id"] != hit["id"]:
                raise RuntimeError(
                    f"decontaminate plan does not match shard {shard} at row {pos}: {row['id']}"
                )
            if hit["method"] == "missing":
                self.meta(row).update({"method": "missing", "on": self.params.on})
                self.reject(row, f"unchecked: no response to check (on: {self.params.on})")
                continue
            where = f"{hit['benchmark']} {hit['item']} ({hit['field']})"
            if hit["method"] == "embedding":
                reason = f"contaminated: embedding cosine {hit['cosine']:.2f} with {where}"
            elif hit["kind"].startswith("whole"):
                reason = f"contaminated: contains the {hit['kind']} {where}"
            else:
                reason = f"contaminated: {hit['matches']} shared {hit['kind']} with {where}"
            self.meta(row).update({k: v for k, v in hit.items() if k != "id"})
            self.reject(row, reason)
        return rows


def checks(run_dir: str | Path) -> list[dict]:
    """[{"stage": stage dir, "rows_in": its input rows, "check": plan["check"] or None (not run)}], one
    per decontaminate stage of the run, from manifest.json and each stage's _PLAN.pkl."""
    run_dir = location(run_dir)
    path = run_dir / "manifest.json"
    stages = json.loads(path.read_text("utf-8")).get("stages", []) if path.exists() else []
    out = []
    for s in stages:
        if s["name"].rsplit(":", 1)[-1].lower() != "decontaminate":
            continue
        plan_path = run_dir / s["dir"] / "_PLAN.pkl"
        check = pickle.loads(plan_path.read_bytes())["plan"].get("check") if plan_path.exists() else None
        out.append({"stage": s["dir"].split("/")[-1], "rows_in": s.get("rows_in", 0), "check": check})
    return out


def statement(run_dir: str | Path) -> list[str]:
    """The dataset card's contamination statement (markdown lines), one part per decontaminate stage:
    what it checked (on, n-gram sizes), each benchmark file with its sha256 and items, rows checked and
    rejected. Says so plainly when the run checked nothing."""
    found = checks(run_dir)
    if not found:
        return ["Not checked: the run has no decontaminate stage, so no row was compared with any benchmark."]
    lines = []
    for c in found:
        check, head = c["check"], f"- stage {c['stage']}"
        if check is None:
            lines.append(f"{head}: not run")
            continue
        if not check["files"]:
            lines.append(f"{head}: no benchmark file listed; its {c['rows_in']} rows were not checked")
            continue
        emb = f", embedding cosine >= {check['embedding']}" if check["embedding"] else ""
        unchecked = check["rows_unchecked"]
        lines.append(
            f"{head}: checked the {check['on']} text of {check['rows_checked']} rows; "
            f"{check['rows_contaminated']} rejected as contaminated"
            + (f", {unchecked} rejected as unchecked (no text to check)" if unchecked else "")
            + f" ({check['ngram']}-word / {check['char_ngram']}-character n-grams, "
            f"at least {check['min_matches']} shared with one item{emb})"
        )
        lines += [
            "",
            "  | benchmark | fields | items | texts indexed | sha256 |",
            "  |---|---|---:|---:|---|",
        ]
        lines += [
            f"  | {f['name']} | {', '.join(f['fields'])} | {f['items']} | {f['texts_indexed']} | `{f['sha256']}` |"
            for f in check["files"]
        ]
        lines.append("")
    return lines


def _json_line(path: Path, line: int, text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line}: bad JSON: {e.msg}") from e
