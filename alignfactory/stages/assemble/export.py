"""export (corpus stage, one Ray task): the final rows, in the formats the spec asks for, under the run dir.

    sft/         {"messages": [{"role", "content"}, ...]}                           TRL conversational LM
    preference/  {"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...]}  TRL preference
    qwen/        {"id", "conversations": [{"from": "system"|"user"|"assistant", "value"}]}   Qwen fine-tuning
    sharegpt/    {"id", "conversations": [{"from": "system"|"human"|"gpt", "value"}]}
    firefly/     {"kind", "input", "target"}        single-turn rows only (multi-turn ones are counted, skipped)

Each format dir holds train.{jsonl,parquet} and dataset/ (save_to_disk) as params.files asks; with
`card` also README.md, a dataset card whose YAML header names the splits, so
`datasets.load_dataset("<run>/sft")` loads the dir as is. The card carries counts, pair statistics,
the generator model of each LLM stage, the licence file of each input file, the judge's consistency
under position swap, the contamination statement (decontaminate.statement: benchmark files with
their sha256, n-gram size, rows checked and rejected), rows longer than the shipped training
configs' `max_length` (which training would cut), and the spec.

params.holdout: that fraction of rows goes to holdout.{jsonl,parquet} instead of train, chosen by a
hash of the row's lineage root, its input line (`source` {file, line}, which read sets and every
derived row keeps): sibling samples, evolutions and revisions of one seed land on the same side, so
nothing of a held-out seed leaks into train. The same rows on every run; a preference pair follows
the row that carries it. meta.export records each row's split, root and token count.

Lengths are counted in tokens with the SmolLM2 tokenizer (the model the shipped training configs
fine-tune), chat template applied; where it cannot load, estimated (non-CJK characters / 4 + one per
CJK character + 4 per message) and the card says so.

SFT rows are rows whose messages end with an assistant turn; preference rows come from the `pairs`
column ([{"chosen", "rejected", "stage", ...}], prompt = the row's prompt). A row that gives neither
is rejected ("no_response"). Each format is written to a temp dir and renamed, so a kill leaves the
old export or the new one, never half of one.

Completeness, the last guard (whole_only): a final assistant turn whose finish reason is not "stop" or
"input" (a missing one included) never reaches sft/ (nor qwen/, sharegpt/, firefly/), and a pair whose
chosen or rejected side has such a reason (chosen_finish_reason / rejected_finish_reason; missing counts
as incomplete) never reaches preference/. Each drop goes to rejected/ as `truncated: ...` (finish
reason "length") or `incomplete: ...` with the cut text as raw. When nothing whole is left the row
itself is the reject; otherwise the row goes on without the cut part (a cut answer: an export child
row holding the prompt and the whole pairs) and the cut part is a discarded candidate (lineage stage
export, records.discarded_candidate), so every input line still ends up exactly once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from statistics import mean, median
from typing import Literal

from pydantic import BaseModel, Field

from alignfactory import io, records, registry
from alignfactory.stages.assemble.filter import incomplete_reason
from alignfactory.stages.base import Stage
from alignfactory.storage import location, remove_tree

log = logging.getLogger("alignfactory")
PIPELINES = Path(__file__).resolve().parents[3] / "pipelines"  # the shipped training configs
# which shipped training configs read which export format (their max_length keys)
TRAIN_CONFIGS = {"sft": "train_sft*.yaml", "preference": "train_dpo*.yaml train_reward*.yaml"}
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")

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


def is_holdout(key: str, fraction: float) -> bool:
    """Deterministic split: the first 8 hex digits of sha256("holdout:" + key) as a number in [0, 1)."""
    if fraction <= 0:
        return False
    return int(hashlib.sha256(f"holdout:{key}".encode()).hexdigest()[:8], 16) / 16**8 < fraction


def lineage_root(row: dict) -> str:
    """The row's first ancestor, named by its input line "file:line" (read sets `source`, derive copies
    it to every descendant); the row id only for a row without one."""
    src = row.get("source") or {}
    return f"{src['file']}:{src['line']}" if "file" in src and "line" in src else f"id:{row['id']}"


@lru_cache(maxsize=1)
def training_tokenizer():
    """(tokenizer or None, how lengths are counted): the SmolLM2 tokenizer of the embedded model, which
    the shipped training configs fine-tune; None (estimate) when it cannot load."""
    try:
        from transformers import AutoTokenizer

        from alignfactory.llm.embedded import embedded_model_dir

        return AutoTokenizer.from_pretrained(
            str(embedded_model_dir())
        ), "tokens (SmolLM2 tokenizer, chat template)"
    except Exception as e:  # no model package, no transformers: say so on the card
        log.warning("export: SmolLM2 tokenizer unavailable (%s); lengths are estimated", e)
        return None, f"estimated tokens (non-CJK chars / 4 + CJK chars + 4 per message; tokenizer: {e})"


def count_tokens(messages: list[dict], tokenizer) -> int:
    """Tokens of a conversation as training sees it (chat template), or the estimate."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        # text first, then ids (as the engine does): apply_chat_template(tokenize=True) returns a dict
        # (input_ids, attention_mask) in recent transformers, whose len() is 2
        text = tokenizer.apply_chat_template(turns, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer is not None:
        return sum(len(tokenizer(m["content"])["input_ids"]) + 4 for m in turns)
    cjk = sum(len(CJK.findall(m["content"])) for m in turns)
    chars = sum(len(m["content"]) for m in turns)
    return (chars - cjk + 3) // 4 + cjk + 4 * len(turns)


def max_lengths(fmt: str) -> dict[str, int]:
    """{training config file name: max_length} of the shipped configs that read `fmt` (qwen, sharegpt
    and firefly rows are SFT rows)."""
    import yaml

    out = {}
    for pattern in TRAIN_CONFIGS["preference" if fmt == "preference" else "sft"].split():
        for path in sorted(PIPELINES.glob(pattern)):
            value = (yaml.safe_load(path.read_text("utf-8")) or {}).get("max_length")
            if isinstance(value, int):
                out[path.name] = value
    return out


def conversations(row: dict, names: dict | None = None) -> list[dict]:
    names = names or {"system": "system", "user": "user", "assistant": "assistant"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in row["messages"]]


def firefly(row: dict) -> dict | None:
    roles = [m["role"] for m in row["messages"] if m["role"] != "system"]
    if roles != ["user", "assistant"]:
        return None
    kind = (row.get("seed") or {}).get("category") or row["lineage"].get("stage") or "general"
    return {"kind": str(kind), "input": records.instruction(row), "target": records.response(row)}


def labelled(reason: str, what: str) -> str:
    """'truncated: finish_reason ...' -> 'truncated: <what> finish_reason ...'."""
    kind, rest = reason.split(": ", 1)
    return f"{kind}: {what} {rest}"


def pair_incomplete(pair: dict) -> str | None:
    """Why a pair may not be exported: a side whose finish reason is not stop/input (missing included)."""
    for side in ("chosen", "rejected"):
        why = incomplete_reason(pair.get(f"{side}_finish_reason"))
        if why:
            return labelled(why, f"pair {side}")
    return None


class Export(Stage):
    kind = "corpus"

    class Params(BaseModel, extra="forbid"):
        formats: list[Literal["sft", "preference", "qwen", "sharegpt", "firefly"]] = Field(
            ["sft"], min_length=1
        )
        files: list[Literal["parquet", "jsonl", "datasets", "card"]] = ["parquet", "jsonl", "datasets"]
        holdout: float = Field(0.0, ge=0, lt=1)  # fraction held out of train (by lineage root hash)
        count_tokens: Literal["tokenizer", "estimate"] = "tokenizer"  # row lengths for the card

    def __call__(self, rows: list[dict]) -> list[dict]:
        fmts = self.params.formats
        out = {f: {"train": [], "holdout": []} for f in fmts}
        stats = {"rows": 0, "holdout_rows": 0, "multi_turn_skipped": 0, "pairs": []}
        tokenizer, stats["counted_as"] = (
            training_tokenizer() if self.params.count_tokens == "tokenizer" else (None, "estimated tokens")
        )
        stats["tokens"] = {"sft": [], "preference": []}  # [(row id, tokens)]; a pair: its longer side
        given = []  # what export gives back: each row (or what the guard made of it) + the dropped parts
        for row in rows:
            row, dropped = self.whole_only(row, fmts)
            given += [row] + dropped
            if row.get("reject"):
                continue
            answered = records.response(row) is not None and bool(set(fmts) - {"preference"})
            pairs = (row.get("pairs") or []) if "preference" in fmts else []
            if not answered and not pairs:
                self.reject(row, "no_response")
                continue
            root = lineage_root(row)
            split = "holdout" if is_holdout(root, self.params.holdout) else "train"
            audit = self.meta(row)
            audit.update({"split": split, "lineage_root": root})
            if answered:
                audit["tokens"] = count_tokens(row["messages"], tokenizer)
                stats["tokens"]["sft"].append((row["id"], audit["tokens"]))
            if pairs:
                prompt_turns = records.prompt_messages(row)
                audit["pair_tokens"] = [
                    max(
                        count_tokens(prompt_turns + [{"role": "assistant", "content": p[side]}], tokenizer)
                        for side in ("chosen", "rejected")
                    )
                    for p in pairs
                ]
                stats["tokens"]["preference"] += [(row["id"], n) for n in audit["pair_tokens"]]
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
        return given

    def whole_only(self, row: dict, fmts: list[str]) -> tuple[dict, list[dict]]:
        """The completeness guard: (the row to export, its dropped parts as rejected rows). A row with
        nothing cut comes back as it is; with nothing whole left it comes back rejected."""
        wants_turn = bool(set(fmts) - {"preference"}) and records.response(row) is not None
        cut_turn = incomplete_reason(records.response_finish_reason(row)) if wants_turn else None
        pairs = (row.get("pairs") or []) if "preference" in fmts else []
        cut_pairs = {i: why for i, p in enumerate(pairs) if (why := pair_incomplete(p))}
        if not cut_turn and not cut_pairs:
            return row, []
        whole = [p for i, p in enumerate(pairs) if i not in cut_pairs]
        drops = []
        if cut_turn:
            drops.append((labelled(cut_turn, "response"), row["messages"], records.response(row), []))
        for i, why in cut_pairs.items():  # the row holding the cut side as its answer: the raw, auditable
            side = "chosen" if incomplete_reason(pairs[i].get("chosen_finish_reason")) else "rejected"
            turn = records.assistant(pairs[i][side], pairs[i].get(f"{side}_finish_reason"))
            drops.append((why, records.prompt_messages(row) + [turn], pairs[i][side], [pairs[i]]))
        if not whole and (cut_turn or not wants_turn):  # nothing whole left: the row itself is the reject
            self.meta(row)["dropped"] = [why for why, *_ in drops]
            return self.reject(row, drops[0][0], raw=drops[0][2]), []
        kept = row
        if cut_turn:  # the answer goes, the whole pairs stay: an export child of the prompt alone
            kept = records.derive(row, self.ctx.name, records.prompt_messages(row))
        if pairs:
            kept["pairs"] = whole
        self.meta(kept)["dropped"] = [why for why, *_ in drops]
        dropped = []
        for why, messages, raw, carried in drops:
            part = records.derive(row, self.ctx.name, messages)
            part["pairs"] = carried
            dropped.append(self.reject(part, why, raw=raw))
        return kept, dropped

    def write(self, fmt: str, splits: dict[str, list[dict]], stats: dict) -> None:
        """<run>/<fmt>/ replaced whole: written beside it and renamed into place (local), or written
        locally and uploaded file by file (object stores, which rename nothing: the export is whole
        once the stage's _SUCCESS is written, which comes after)."""
        files = self.params.files
        target = location(self.ctx.run_dir) / fmt
        local = isinstance(target, Path)
        tmp = target.with_name(f".{fmt}.tmp") if local else Path(tempfile.mkdtemp(prefix=f"{fmt}-"))
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
        if not local:
            remove_tree(target)
            target.fs.put(f"{tmp}/", target.path, recursive=True)
            shutil.rmtree(tmp, ignore_errors=True)
            return
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
            lines.append(
                f"- holdout: {self.params.holdout} of input lines (sha256 of the lineage root, the input "
                "file:line every derived row keeps): all rows of one seed are on one side"
            )
        if fmt == "preference":
            lines += ["", "## Pairs", ""] + pair_stats(stats["pairs"], stats["ties"])
        from alignfactory.inspect import consistency_lines, judge_consistency
        from alignfactory.stages.curate.decontaminate import statement

        run_dir = location(self.ctx.run_dir)
        path = run_dir / "manifest.json"
        manifest = json.loads(path.read_text("utf-8")) if path.exists() else {}
        spec = manifest.get("spec") or {}
        lines += ["", "## Provenance", "", *provenance(spec)]
        lines += [
            "",
            "## Judge consistency (position swap)",
            "",
            *consistency_lines(judge_consistency(run_dir)),
        ]
        lines += ["", "## Contamination", "", *statement(run_dir)]
        lines += ["", "## Length against the shipped training configs", ""]
        lines += length_lines(
            stats["tokens"]["preference" if fmt == "preference" else "sft"], fmt, stats["counted_as"]
        )
        if spec:
            lines += ["", "## Spec", "", "```json", json.dumps(spec, indent=2, ensure_ascii=False), "```"]
        return "\n".join(lines) + "\n"


def provenance(spec: dict) -> list[str]:
    """Markdown lines: the model of each LLM stage (the stage's own, else the pipeline's) and the licence
    file(s) beside each input file (LICENSE*.md in its folder that name it, else all of them)."""
    from alignfactory.llm.config import ModelConfig

    lines = ["Generator models (per LLM stage):", ""]
    default = ModelConfig.model_validate(spec.get("model") or {})
    for i, st in enumerate(spec.get("stages") or [], 1):
        try:
            llm = registry.resolve(st["name"]).uses_llm
        except Exception:  # an unknown stage name: the spec validated when it ran; show it, unmarked
            llm = False
        if llm:
            m = ModelConfig.model_validate(st["model"]) if st.get("model") else default
            ident = m.identity()
            lines.append(f"- {i:02d}-{st['name']}: `{ident['path']}` ({ident['backend']}, {ident['dtype']})")
    if len(lines) == 2:
        lines.append("- none (no LLM stage)")
    lines += ["", "Input files and their licences:", ""]
    inputs = (spec.get("input") or {}).get("path") or []
    for pattern in [inputs] if isinstance(inputs, str) else inputs:
        try:
            files = io.expand_paths([pattern])
        except Exception as e:  # moved since the run: say so rather than guess
            lines.append(f"- `{pattern}`: not found now ({e})")
            continue
        for f in files:
            found = sorted(f.parent.glob("LICENSE*")) if f.is_file() else sorted(f.glob("LICENSE*"))
            named = [lic for lic in found if f.name in lic.read_text("utf-8", errors="replace")]
            names = ", ".join(f"`{lic}`" for lic in (named or found)) or "no licence file beside it"
            lines.append(f"- `{f}`: {names}")
    return lines


def length_lines(tokens: list[tuple[str, int]], fmt: str, counted_as: str) -> list[str]:
    """Markdown lines: rows (pairs: their longer side) longer than each shipped training config's
    max_length, which training would cut, with the first ids."""
    limits = max_lengths(fmt)
    if not tokens:
        return ["- no rows"]
    lines = [
        f"Lengths in {counted_as}; longest {max(n for _, n in tokens)}.",
        "",
        "| training config | max_length | rows longer (training cuts them) | first ids |",
        "|---|---:|---:|---|",
    ]
    for name, limit in limits.items():
        over = [rid for rid, n in tokens if n > limit]
        lines.append(f"| {name} | {limit} | {len(over)} | {', '.join(over[:5]) or '-'} |")
    return lines if limits else lines[:1] + ["", "- no shipped training config with max_length"]


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
