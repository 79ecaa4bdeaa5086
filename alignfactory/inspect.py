"""A run directory as pandas frames, for notebooks, the HTML report and the dataset card.

    from alignfactory import inspect
    inspect.manifest("runs/sft_data")              # dict
    inspect.stages("runs/sft_data")                # one row per stage: rows in/out/rejected, tokens, seconds
    inspect.stage_rows("runs/sft_data", "generate")    # one stage's output rows (+ instruction, response)
    inspect.final_rows("runs/sft_data")            # rows that reached the end (all their meta), + lengths
    inspect.rejected("runs/sft_data")              # stage, reason, kind, file, line, id, raw
    inspect.outcomes("runs/sft_data")              # every input line -> exported | rejected (stage, reason)
    inspect.leaves("runs/sft_data")                # every row in its final state (exported or rejected)
    inspect.lineage("runs/sft_data")               # edges parent -> id with stage, operation, round
    inspect.tags("runs/sft_data")                  # long frame: id, tag, kind (canonical | raw)
    inspect.scores("runs/sft_data")                # judge / reward scores, verifier pass rates
    inspect.judge_consistency("runs/sft_data")     # pairwise judge: agree / ties under swap, per judge stage
    inspect.verdicts("runs/sft_data")              # sandbox statuses per candidate
    inspect.pairs("runs/sft_data")                 # preference pairs: lengths, ratio, score margin
    inspect.duplicates("runs/sft_data")            # near/exact duplicate clusters with examples
    inspect.exported("runs/sft_data", "sft")       # sft/train.jsonl as written
    inspect.missing("runs/sft_data")               # {view: one line saying what the run lacks}

Every function returns an empty frame (with its columns) when the run lacks that data: a run without
tags or pairs is not an error. Only a directory that is not a run directory raises (FileNotFoundError).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from alignfactory import io, records
from alignfactory.storage import is_local, location, resolved, stamp

REPORT_LINK = "Report: [report.html](report.html) (plots of tags, lengths, rejections, scores, pairs, cost)."
DUPLICATE = re.compile(r"duplicate of ([0-9a-f]{16})")  # dedup's reject reason names the kept row


REPO = Path(__file__).resolve().parents[1]  # the checkout holding pipelines/ and runs/ (editable install)


def find_run(run_dir: str | Path) -> Path:
    """A run directory as the notebooks take it: absolute; else relative to the current directory
    when it is there (papermill from the repo root); else relative to the repo (Jupyter opened in
    notebooks/, papermill started anywhere else). Unresolved, the name as given (manifest() then says
    it is not a run directory)."""
    if not is_local(run_dir):
        return location(run_dir)  # a storage URL, as given
    run = location(run_dir).expanduser()
    if run.is_absolute() or run.exists():
        return run
    return REPO / run if (REPO / run).exists() else run


def manifest(run_dir: str | Path) -> dict:
    path = location(run_dir) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no manifest.json)")
    return json.loads(path.read_text("utf-8"))


def _frame(rows: list[dict], columns: list[str] | None = None):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns) if not rows and columns else pd.DataFrame(rows)


# ---- reading shards (cached per run dir and manifest write) ---------------------------------------


def _stage_dirs(run_dir: Path) -> list[Path]:
    stages = run_dir / "stages"
    return sorted(d for d in stages.iterdir() if d.is_dir()) if stages.exists() else []


@lru_cache(maxsize=4)
def _load(run_dir: str, changed: float) -> dict[str, list[dict]]:
    """{stage dir name: every row its shards hold, kept and rejected}; `changed` = manifest mtime (the cache key)."""
    return {
        d.name: [r for p in sorted(d.glob("shard-*.jsonl")) for r in io.read_jsonl(p)[1:]]
        for d in _stage_dirs(location(run_dir))
    }


def _outputs(run_dir: str | Path) -> dict[str, list[dict]]:
    run_dir = resolved(run_dir)
    m = run_dir / "manifest.json"
    if not m.exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no manifest.json)")
    return _load(str(run_dir), stamp(m))


def _stage_name(dir_name: str) -> str:
    return dir_name.split("-", 1)[1] if "-" in dir_name else dir_name


def _with_text(df, rows: list[dict]):
    if len(df):
        df["instruction"] = [records.instruction(r) for r in rows]
        df["response"] = [records.response(r) for r in rows]
    return df


def stages(run_dir: str | Path):
    """One row per stage from manifest.json: index, name, dir, rows_in, rows_out, rejected, tokens, seconds."""
    cols = ["index", "name", "dir", "done", "rows_in", "rows_out", "rejected", "tokens_in", "tokens_out"]
    rows = [
        {c: s.get(c, 0) for c in cols} | {"seconds": s.get("seconds", 0.0)}
        for s in manifest(run_dir)["stages"]
    ]
    return _frame(rows, cols + ["seconds"])


def stage_rows(run_dir: str | Path, stage: str, include_rejected: bool = False):
    """Rows a stage wrote, by stage name ("generate") or dir name ("02-generate")."""
    out = _outputs(run_dir)
    matches = [d for d in out if d == stage or _stage_name(d) == stage]
    if not matches:
        raise KeyError(f"{run_dir}: no stage {stage!r} (have {list(out)})")
    rows = out[matches[0]]
    rows = rows if include_rejected else [r for r in rows if not r.get("reject")]
    return _with_text(_frame(rows), rows)


def final_rows(run_dir: str | Path) -> list[dict]:
    """Rows kept by the last stage (export passes its input through): each with all its meta."""
    out = _outputs(run_dir)
    return [r for r in out[list(out)[-1]] if not r.get("reject")] if out else []


def final(run_dir: str | Path):
    """final_rows as a frame, with instruction/response text and their lengths (characters)."""
    rows = final_rows(run_dir)
    df = _with_text(_frame(rows, ["id", "messages", "source", "lineage", "meta"]), rows)
    if len(df):
        df["instruction_chars"] = df["instruction"].str.len()
        df["response_chars"] = [len(t) if t is not None else None for t in df["response"]]
    return df


def reason_kind(reason: str) -> str:
    """'too_short: 3 < 20 chars' -> 'too_short'; 'duplicate of 9f2c...' -> 'duplicate'."""
    return reason.split(":")[0].split(" of ")[0].strip()


def rejected(run_dir: str | Path):
    """rejected/*.jsonl: stage, reason, kind (the reason without its detail), file, line, id, raw."""
    rows = [r for p in sorted((location(run_dir) / "rejected").glob("*.jsonl")) for r in io.read_jsonl(p)]
    cols = ["stage", "reason", "kind", "file", "line", "id", "instruction", "raw", "candidate"]
    return _frame(
        [
            {
                "candidate": records.discarded_candidate(r),  # a stage's own discarded candidate
                "stage": r["reject"]["stage"],
                "reason": r["reject"]["reason"],
                "kind": reason_kind(r["reject"]["reason"]),
                "file": r["source"].get("file"),
                "line": r["source"].get("line"),
                "id": r["id"],
                "instruction": records.instruction(r),
                "raw": r["reject"].get("raw"),
            }
            for r in rows
        ],
        cols,
    )


def outcomes(run_dir: str | Path):
    """Every input line read (file, line) with where it ended: outcome 'exported' (kept by the last
    stage) or 'rejected' (stage, reason). One line may give several rows (n > 1 samples). A stage's
    discarded candidates (records.discarded_candidate: an eliminated evolution) are not their line's
    outcome while the line has another; inspect.rejected() lists them."""
    out = _outputs(run_dir)
    names = list(out)
    done = [("exported", None, None, r) for r in out[names[-1]] if not r.get("reject")] if names else []
    gone = [
        ("rejected", r["reject"]["stage"], r["reject"]["reason"], r)
        for d in names
        for r in out[d]
        if r.get("reject")
    ]

    def line(r: dict) -> tuple:
        return (r["source"].get("file"), r["source"].get("line"))

    # a line whose only rows are discarded candidates keeps the first of them as its outcome
    settled = {line(r) for _, _, _, r in done}
    settled |= {line(r) for _, _, _, r in gone if not records.discarded_candidate(r)}
    kept = []
    for item in gone:
        r = item[3]
        if records.discarded_candidate(r):
            if line(r) in settled:
                continue
            settled.add(line(r))
        kept.append(item)
    gone = kept
    cols = ["file", "line", "id", "outcome", "stage", "reason"]
    return _frame(
        [
            {"file": r["source"].get("file"), "line": r["source"].get("line"), "id": r["id"], "outcome": o}
            | {"stage": st, "reason": why}
            for o, st, why, r in done + gone
        ],
        cols,
    )


def exported(run_dir: str | Path, fmt: str = "sft"):
    path = location(run_dir) / fmt / "train.jsonl"
    return _frame(io.read_jsonl(path) if path.exists() else [])


# ---- lineage, tags, scores, verdicts, pairs, duplicates ------------------------------------------


def lineage(run_dir: str | Path):
    """One edge per (parent -> row) a stage made: id, parent, stage, operation and round (evolution),
    rejected reason if the child was dropped, and the child's instruction."""
    edges, seen = [], set()
    for d, rows in _outputs(run_dir).items():
        for r in rows:
            lin = r.get("lineage") or {}
            if lin.get("stage") != _stage_name(d) or not lin.get("parents"):
                continue  # a row passed through, not made here
            for parent in lin["parents"]:
                key = (r["id"], parent, lin["stage"], lin.get("round"))
                if key in seen:
                    continue
                seen.add(key)
                edges.append(
                    {
                        "id": r["id"],
                        "parent": parent,
                        "stage": lin["stage"],
                        "operation": lin.get("operation"),
                        "round": lin.get("round"),
                        "rejected": (r.get("reject") or {}).get("reason"),
                        "instruction": records.instruction(r),
                    }
                )
    return _frame(edges, ["id", "parent", "stage", "operation", "round", "rejected", "instruction"])


def depth(run_dir: str | Path):
    """Per final row: depth = stage steps that made it from its input line (edges followed back to
    a root), round = the highest evolution round on that path (0: never evolved)."""
    up = {}  # id -> (parent id, evolution round of the edge or None)
    for e in lineage(run_dir).itertuples():
        up.setdefault(e.id, (e.parent, e.round))
    rows = []
    for r in final_rows(run_dir):
        n, rnd, node, guard = 0, 0, r["id"], set()
        while node in up and node not in guard:
            guard.add(node)
            node, edge_round = up[node]
            n, rnd = n + 1, max(rnd, int(edge_round) if edge_round == edge_round and edge_round else 0)
        rows.append({"id": r["id"], "depth": n, "round": rnd})
    return _frame(rows, ["id", "depth", "round"])


def _tag_names(tags) -> list[str]:
    """Tags as strings: InsTag-style [{"tag", "explanation"}] or plain strings."""
    out = []
    for t in tags or []:
        name = t.get("tag") if isinstance(t, dict) else t
        if isinstance(name, str) and name.strip():
            out.append(name.strip())
    return out


def source_key(row: dict) -> str:
    return f"{row['source'].get('file')}:{row['source'].get('line')}"


def leaves(run_dir: str | Path) -> list[dict]:
    """Every row in its final state: each rejected row (a rejected row goes no further) and each row
    the last stage kept. With n = 1 sample per row that is one row per input line."""
    out = _outputs(run_dir)
    return [r for rows in out.values() for r in rows if r.get("reject")] + final_rows(run_dir)


def tags(run_dir: str | Path):
    """Long frame id, source (file:line), tag, kind: 'canonical' (meta.tag_normalize.tags) or 'raw'
    (meta.instag.tags), one set per input line (its last row; rejected rows too, with `rejected`).
    Count tags by unique `source`: n samples of one instruction carry the same tags."""
    out, seen = [], set()
    for r in leaves(run_dir):
        meta = r.get("meta") or {}
        if source_key(r) in seen or not (meta.get("instag") or meta.get("tag_normalize")):
            continue
        seen.add(source_key(r))
        reason = (r.get("reject") or {}).get("reason")
        for kind, key in (("canonical", "tag_normalize"), ("raw", "instag")):
            for t in _tag_names((meta.get(key) or {}).get("tags")):
                out.append(
                    {"id": r["id"], "source": source_key(r), "tag": t, "kind": kind, "rejected": reason}
                )
    return _frame(out, ["id", "source", "tag", "kind", "rejected"])


def _jsonl_frame(path: Path, cols: list[str]):
    return _frame(io.read_jsonl(path) if path.exists() else [], cols)


def tag_vocabulary(run_dir: str | Path):
    """tags/vocabulary.jsonl: tag, count, members (raw tags merged into it)."""
    return _jsonl_frame(location(run_dir) / "tags" / "vocabulary.jsonl", ["tag", "count", "members"])


def tag_mapping(run_dir: str | Path):
    """tags/mapping.jsonl: raw -> canonical, and the normalization step that merged it."""
    return _jsonl_frame(location(run_dir) / "tags" / "mapping.jsonl", ["raw", "canonical", "step"])


def scores(run_dir: str | Path):
    """Per leaf row that carries a score (rejected rows included): judge and reward scores,
    verifier pass rate (autoif: best response's fraction of kept functions passed; exec_feedback:
    best solution's fraction of trusted tests passed)."""
    out = []
    for r in leaves(run_dir):
        meta = r.get("meta") or {}
        rates = [
            s
            for key, field in (("autoif", "pass_rates"), ("exec_feedback", "scores"))
            for s in ((meta.get(key) or {}).get(field) or [])
            if s is not None
        ]
        item = {
            "id": r["id"],
            "judge": _num((meta.get("judge") or {}).get("score")),
            "reward": _num((meta.get("reward") or {}).get("score")),
            "verifier": max(rates) if rates else None,
            "rejected": (r.get("reject") or {}).get("reason"),
        }
        if any(item[k] is not None for k in ("judge", "reward", "verifier")):
            out.append(item)
    return _frame(out, ["id", "judge", "reward", "verifier", "rejected"])


CONSISTENCY = ("judged", "agree", "ties_under_swap", "unreadable")  # meta.judge.consistency counters
_CONSISTENCY: dict[tuple, dict] = {}  # (finished judge stage dir, its _SUCCESS mtime) -> sums


def judge_consistency(run_dir: str | Path) -> dict:
    """Pairwise judge consistency per judge stage, summed over the rows its output shards hold (kept
    and rejected: each row it judged, once): {stage dir: {"rows", "pairwise_rows", "judged" (compared
    pairs judged both ways), "agree" (same verdict under the swap), "ties_under_swap" (the verdict
    flipped: counted a tie), "unreadable" (comparisons dropped)}}. Reads the shards directly (not the
    cached frames): the runner calls it while writing the manifest. {} when the run has no judge."""
    out = {}
    for d in _stage_dirs(location(run_dir)):
        if _stage_name(d.name) != "judge":
            continue
        done = d / "_SUCCESS"  # a finished stage is read once per process, not at every manifest write
        key = (str(resolved(d)), stamp(done)) if done.exists() else None
        if key in _CONSISTENCY:
            out[d.name] = dict(_CONSISTENCY[key])
            continue
        sums = dict.fromkeys(("rows", "pairwise_rows", *CONSISTENCY), 0)
        for p in sorted(d.glob("shard-*.jsonl")):
            for r in io.read_jsonl(p)[1:]:
                sums["rows"] += 1
                c = ((r.get("meta") or {}).get("judge") or {}).get("consistency")
                if isinstance(c, dict):
                    sums["pairwise_rows"] += 1
                    for k in CONSISTENCY:
                        sums[k] += int(c.get(k) or 0)
        if key is not None:
            _CONSISTENCY[key] = dict(sums)
        out[d.name] = sums
    return out


def consistency_lines(consistency: dict) -> list[str]:
    """Markdown lines for a card or report: per judge stage, agreement under position swap, or
    "not judged pairwise"."""
    if not consistency:
        return ["- no judge stage in this run"]
    lines = []
    for stage, c in consistency.items():
        if not c.get("pairwise_rows"):
            lines.append(f"- {stage}: not judged pairwise ({c.get('rows', 0)} rows scored one at a time)")
            continue
        rate = f"{c['agree'] / c['judged']:.1%}" if c["judged"] else "-"
        lines.append(
            f"- {stage}: {c['agree']} of {c['judged']} comparisons judged both ways agree under position "
            f"swap ({rate}); {c['ties_under_swap']} flipped, counted as ties; {c['unreadable']} unreadable, "
            f"dropped ({c['pairwise_rows']} rows)"
        )
    return lines


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def verdicts(run_dir: str | Path):
    """Sandbox verdicts, one per candidate run: stage, id, what ran (solution | verifier | response
    check), status (PASS FAIL ERROR TLE ... UNPARSEABLE), passed (all its tests)."""
    out, seen = [], set()
    for d, rows in _outputs(run_dir).items():
        for r in rows:
            meta = r.get("meta") or {}
            key = (r["id"], json.dumps(r["source"], sort_keys=True))
            ef, ai = meta.get("exec_feedback"), meta.get("autoif")
            if _stage_name(d) == "exec_feedback" and ef and ("ef",) + key not in seen:
                seen.add(("ef",) + key)
                for i, status in enumerate(ef.get("statuses") or []):
                    m = (ef.get("pass_matrix") or [None] * (i + 1))[i]
                    out.append(_verdict("exec_feedback", r, "solution", status, bool(m) and all(m)))
            if _stage_name(d) == "autoif" and ai and ("ai",) + key not in seen:
                seen.add(("ai",) + key)
                for f in ai.get("functions") or []:
                    out.append(_verdict("autoif", r, "verifier", f.get("status"), bool(f.get("kept"))))
                for status in ai.get("statuses") or []:
                    out.append(_verdict("autoif", r, "response check", status, status == "PASS"))
    return _frame(out, ["stage", "id", "what", "status", "passed"])


def _verdict(stage: str, row: dict, what: str, status, passed: bool) -> dict:
    return {"stage": stage, "id": row["id"], "what": what, "status": status or "NOT_RUN", "passed": passed}


def pairs(run_dir: str | Path):
    """Preference pairs on the final rows: prompt, chosen, rejected, their lengths (chars) and ratio
    (chosen / rejected), scores and margin (chosen_score - rejected_score) where the stage gave them."""
    out = []
    for r in final_rows(run_dir):
        for p in r.get("pairs") or []:
            c, j = _num(p.get("chosen_score")), _num(p.get("rejected_score"))
            out.append(
                {
                    "id": r["id"],
                    "stage": p.get("stage"),
                    "prompt": records.instruction(r),
                    "chosen": p["chosen"],
                    "rejected": p["rejected"],
                    "chosen_chars": len(p["chosen"]),
                    "rejected_chars": len(p["rejected"]),
                    "length_ratio": len(p["chosen"]) / max(1, len(p["rejected"])),
                    "chosen_score": c,
                    "rejected_score": j,
                    "margin": c - j if c is not None and j is not None else None,
                }
            )
    cols = ["id", "stage", "prompt", "chosen", "rejected", "chosen_chars", "rejected_chars"]
    return _frame(out, cols + ["length_ratio", "chosen_score", "rejected_score", "margin"])


def duplicates(run_dir: str | Path):
    """Duplicate clusters: rows rejected as 'duplicate of <id>' grouped under the row they duplicate.
    One row per member: cluster (the kept id), id, instruction, kept (True for the representative)."""
    text = {}
    for rows in _outputs(run_dir).values():
        for r in rows:
            text.setdefault(r["id"], records.instruction(r))
    members: dict[str, list] = {}
    for r in rejected(run_dir).itertuples():
        m = DUPLICATE.search(r.reason)
        if m:
            members.setdefault(m.group(1), []).append((r.id, r.instruction, r.reason))
    out = []
    for kept, dups in members.items():
        out.append(
            {"cluster": kept, "id": kept, "instruction": text.get(kept, ""), "kept": True, "reason": None}
        )
        out += [
            {"cluster": kept, "id": i, "instruction": t, "kept": False, "reason": why} for i, t, why in dups
        ]
    return _frame(out, ["cluster", "id", "instruction", "kept", "reason"])


def missing(run_dir: str | Path) -> dict[str, str]:
    """{view: one line} for every kind of data this run lacks (no tags, no pairs, ...)."""
    run_dir = location(run_dir)
    checks = {
        "tags": (len(tags(run_dir)), "no tags: the run has no instag / tag_normalize stage"),
        "vocabulary": (len(tag_vocabulary(run_dir)), "no tag vocabulary: tags/vocabulary.jsonl is absent"),
        "evolution": (
            int(lineage(run_dir)["operation"].notna().sum()),
            "no evolution: no row carries lineage.operation (no evolve stage)",
        ),
        "scores": (len(scores(run_dir)), "no judge, reward or verifier scores in this run"),
        "verdicts": (len(verdicts(run_dir)), "no sandbox verdicts: no exec_feedback / autoif stage"),
        "pairs": (len(pairs(run_dir)), "no preference pairs in this run"),
        "duplicates": (len(duplicates(run_dir)), "no duplicates were found (or no dedup stage)"),
        "rejected": (len(rejected(run_dir)), "no rows were rejected"),
        "final": (len(final_rows(run_dir)), "no rows reached the end of the pipeline"),
        "sft": (int((run_dir / "sft" / "train.jsonl").exists()), "no sft/ export"),
    }
    return {k: msg for k, (n, msg) in checks.items() if not n}


def _quantiles(values: list[int]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]  # noqa: E731
    return f"min {v[0]}, median {pick(0.5)}, p90 {pick(0.9)}, max {v[-1]}"


def dataset_card(run_dir: str | Path) -> str:
    run_dir = location(run_dir)
    m = manifest(run_dir)
    lines = [f"# {m['name']}", "", f"Made by alignfactory {m['code_version']} in {m['seconds']:.0f} s.", ""]
    lines += [
        "## Stages",
        "",
        "| stage | rows in | rows out | rejected | tokens in | tokens out | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in m["stages"]:
        lines.append(
            f"| {s['dir'].split('/')[-1]} | {s.get('rows_in', 0)} | {s.get('rows_out', 0)} | "
            f"{s.get('rejected', 0)} | {s.get('tokens_in', 0)} | {s.get('tokens_out', 0)} | {s.get('seconds', 0)} |"
        )
    reasons = Counter()
    for p in sorted((run_dir / "rejected").glob("*.jsonl")):
        for r in io.read_jsonl(p):
            kind = r["reject"]["reason"].split(":")[0].split(" of ")[0]  # the kind, not the detail
            reasons[(r["reject"]["stage"], kind)] += 1
    lines += ["", "## Rejected (rejected/)", "", "| stage | reason | rows |", "|---|---|---:|"]
    lines += [f"| {stage} | {reason} | {n} |" for (stage, reason), n in reasons.most_common()]
    from alignfactory.stages.assemble.export import provenance
    from alignfactory.stages.curate.decontaminate import statement

    lines += ["", "## Provenance", "", *provenance(m.get("spec") or {})]
    consistency = m.get("judge_consistency")
    consistency = judge_consistency(run_dir) if consistency is None else consistency
    lines += ["", "## Judge consistency (position swap)", "", *consistency_lines(consistency)]
    lines += ["", "## Contamination", "", *statement(run_dir)]
    for fmt in ("sft", "preference"):
        path = run_dir / fmt / "train.jsonl"
        if not path.exists():
            continue
        rows = io.read_jsonl(path)
        lines += ["", f"## {fmt}/ ({len(rows)} rows, TRL conversational format)", ""]
        if fmt == "sft":
            lines.append(
                f"- response length (chars): {_quantiles([len(r['messages'][-1]['content']) for r in rows])}"
            )
            lines.append(
                f"- prompt length (chars): {_quantiles([len(r['messages'][-2]['content']) for r in rows])}"
            )
        else:
            lines.append(
                f"- chosen length (chars): {_quantiles([len(r['chosen'][0]['content']) for r in rows])}"
            )
            lines.append(
                f"- rejected length (chars): {_quantiles([len(r['rejected'][0]['content']) for r in rows])}"
            )
    lines += [
        "",
        "Lineage: every row carries `lineage.parents` and `lineage.stage`; stages/<i>-<stage>/ holds each step.",
    ]
    if (run_dir / "report.html").exists():  # `alignfactory report` wrote it: keep the link on re-runs
        lines += ["", REPORT_LINK]
    return "\n".join(lines) + "\n"
