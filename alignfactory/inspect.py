"""A run directory as pandas, for notebooks, and its dataset card (runs/<name>/README.md).

from alignfactory import inspect
inspect.manifest("runs/sft_data")           # dict
inspect.stage_rows("runs/sft_data", "generate")   # DataFrame of one stage's output rows
inspect.rejected("runs/sft_data")           # DataFrame: stage, reason, source, raw
inspect.exported("runs/sft_data", "sft")    # DataFrame of sft/train.jsonl
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from alignfactory import io, records


def manifest(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "manifest.json").read_text("utf-8"))


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def stage_rows(run_dir: str | Path, stage: str, include_rejected: bool = False):
    """Rows a stage wrote, by stage name ("generate") or dir name ("02-generate")."""
    stages = Path(run_dir) / "stages"
    matches = [d for d in sorted(stages.iterdir()) if d.name == stage or d.name.split("-", 1)[1] == stage]
    if not matches:
        raise KeyError(f"{run_dir}: no stage {stage!r} (have {[d.name for d in sorted(stages.iterdir())]})")
    rows = [r for p in sorted(matches[0].glob("shard-*.jsonl")) for r in io.read_jsonl(p)[1:]]
    rows = rows if include_rejected else [r for r in rows if not r.get("reject")]
    df = _frame(rows)
    if len(df):
        df["instruction"] = [records.instruction(r) for r in rows]
        df["response"] = [records.response(r) for r in rows]
    return df


def rejected(run_dir: str | Path):
    rows = [r for p in sorted((Path(run_dir) / "rejected").glob("*.jsonl")) for r in io.read_jsonl(p)]
    return _frame(
        [
            {
                "stage": r["reject"]["stage"],
                "reason": r["reject"]["reason"],
                "file": r["source"].get("file"),
                "line": r["source"].get("line"),
                "id": r["id"],
                "raw": r["reject"].get("raw"),
            }
            for r in rows
        ]
    )


def exported(run_dir: str | Path, fmt: str = "sft"):
    return _frame(io.read_jsonl(Path(run_dir) / fmt / "train.jsonl"))


def _quantiles(values: list[int]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]  # noqa: E731
    return f"min {v[0]}, median {pick(0.5)}, p90 {pick(0.9)}, max {v[-1]}"


def dataset_card(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
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
    return "\n".join(lines) + "\n"
