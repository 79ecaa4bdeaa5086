"""Cost and yield of a run, and the budget a spec may set.

Per stage: rows in/out/rejected, tokens in/out, worker seconds (each shard's wall time in the worker
that ran it, summed; engine load time apart), GPU-seconds (worker seconds x the GPUs each worker
holds) and money (tokens x the price of the stage's model). Per accepted SFT row and per preference
pair: the whole run's tokens, seconds and money divided by their count (both views share one cost).

    spec:   prices: {"embedded:smollm2-135m-instruct": {input_per_1k: 0.0001, output_per_1k: 0.0002}}
            budget: {tokens: 200000, money: 5.0}     # either or both; prompt + completion tokens

Price keys are a model's path as the spec gives it (`model.path`, or "embedded:smollm2-135m-instruct"
for the default model); "*" prices every model without its own key. The budget counts everything
written in the run directory, earlier interrupted runs included, so a run stopped by its budget
resumes where it stopped when started again with a bigger one (the budget is in no fingerprint).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from alignfactory.storage import location

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


class Price(BaseModel, extra="forbid"):
    input_per_1k: float = Field(0.0, ge=0)  # money per 1000 prompt tokens
    output_per_1k: float = Field(0.0, ge=0)  # money per 1000 completion tokens


class Budget(BaseModel, extra="forbid"):
    tokens: int | None = Field(None, ge=1)  # prompt + completion tokens, every stage
    money: float | None = Field(None, gt=0)  # in the unit the prices use


class BudgetExceeded(RuntimeError):
    """Raised between shards when the run has spent its budget; what was written stays (resume)."""


# ---- prices -------------------------------------------------------------------------------------


def stage_models(spec: dict) -> dict[int, str]:
    """Stage index (1-based, as in stages/<i>-<name>) -> the model path its tokens are priced by."""
    default = (spec.get("model") or {}).get("path") or DEFAULT_MODEL
    out = {}
    for i, st in enumerate(spec.get("stages") or [], 1):  # a stage's own model: its path, or embedded
        out[i] = (st["model"].get("path") or DEFAULT_MODEL) if st.get("model") is not None else default
    return out


def price_of(prices: dict, model: str) -> Price:
    p = prices.get(model, prices.get("*"))
    return Price.model_validate(p) if p is not None else Price()


def money(price: Price, tokens_in: int, tokens_out: int) -> float:
    return tokens_in / 1000 * price.input_per_1k + tokens_out / 1000 * price.output_per_1k


# ---- per stage, per unit ------------------------------------------------------------------------


def stage_costs(manifest: dict) -> list[dict]:
    """One dict per stage of manifest.json (read included): rows, tokens, seconds, GPU-s, money."""
    spec = manifest.get("spec") or {}
    models, prices = stage_models(spec), spec.get("prices") or {}
    specs = spec.get("stages") or []
    out = []
    for s in manifest["stages"]:
        i = s["index"]
        gpus = float(((specs[i - 1].get("resources") or {}).get("num_gpus", 0.0)) if i else 0.0)
        tin, tout = int(s.get("tokens_in", 0)), int(s.get("tokens_out", 0))
        seconds, load = float(s.get("seconds", 0.0)), float(s.get("load_seconds", 0.0))
        out.append(
            {
                "stage": s["dir"].split("/")[-1],
                "model": models.get(i) if tin or tout else None,
                "rows_in": int(s.get("rows_in", 0)),
                "rows_out": int(s.get("rows_out", 0)),
                "rejected": int(s.get("rejected", 0)),
                "tokens_in": tin,
                "tokens_out": tout,
                "seconds": round(seconds, 3),
                "load_seconds": round(load, 3),
                "gpu_seconds": round((seconds + load) * gpus, 3),
                "money": round(money(price_of(prices, models.get(i, "")), tin, tout), 6) if i else 0.0,
            }
        )
    return out


def _count_lines(path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def summary(manifest: dict, run_dir: str | Path) -> dict:
    """What manifest.json keeps under "cost": stages, totals, and per SFT row / per preference pair."""
    stages = stage_costs(manifest)
    keys = ("tokens_in", "tokens_out", "seconds", "load_seconds", "gpu_seconds", "money")
    total = {k: round(sum(s[k] for s in stages), 6) for k in keys}
    total["tokens"] = total["tokens_in"] + total["tokens_out"]
    total["wall_seconds"] = float(manifest.get("seconds", 0.0))
    units = {
        "sft_rows": _count_lines(location(run_dir) / "sft" / "train.jsonl"),
        "preference_pairs": _count_lines(location(run_dir) / "preference" / "train.jsonl"),
    }
    per = {}
    for unit, n in units.items():
        per[unit] = (
            {
                "count": n,
                "tokens": round(total["tokens"] / n, 2),
                "seconds": round((total["seconds"] + total["load_seconds"]) / n, 3),
                "gpu_seconds": round(total["gpu_seconds"] / n, 3),
                "money": round(total["money"] / n, 6),
            }
            if n
            else {"count": 0}
        )
    read = next((s for s in stages if s["stage"].startswith("00-")), None)
    lines_read = read["rows_in"] if read else 0
    return {"stages": stages, "total": total, "per": per, "yield": yield_of(lines_read, units)}


def yield_of(lines_read: int, units: dict) -> dict:
    """Input lines read -> accepted SFT rows and preference pairs, as counts and SFT rows per line."""
    sft, pairs = units["sft_rows"], units["preference_pairs"]
    return {
        "input_rows": lines_read,
        "sft_rows": sft,
        "preference_pairs": pairs,
        "sft_per_input": round(sft / lines_read, 4) if lines_read else None,
    }


def table(cost: dict) -> str:
    """The cost summary as a fixed-width text table (printed at the end of a run)."""
    head = ("stage", "in", "out", "rej", "tok in", "tok out", "worker s", "gpu s", "money")
    rows = [
        (
            s["stage"],
            s["rows_in"],
            s["rows_out"],
            s["rejected"],
            s["tokens_in"],
            s["tokens_out"],
            f"{s['seconds'] + s['load_seconds']:.1f}",
            f"{s['gpu_seconds']:.1f}",
            f"{s['money']:.4f}",
        )
        for s in cost["stages"]
    ]
    t = cost["total"]
    rows.append(
        ("total", "", "", "", t["tokens_in"], t["tokens_out"], f"{t['seconds'] + t['load_seconds']:.1f}")
        + (f"{t['gpu_seconds']:.1f}", f"{t['money']:.4f}")
    )
    widths = [max(len(str(r[c])) for r in [head, *rows]) for c in range(len(head))]

    def fmt(r: tuple) -> str:  # first column left-aligned, numbers right-aligned
        cells = zip(r, widths, strict=True)
        return "  ".join(str(v).ljust(w) if c == 0 else str(v).rjust(w) for c, (v, w) in enumerate(cells))

    lines = [fmt(head), *map(fmt, rows)]
    for unit, label in (("sft_rows", "per SFT row"), ("preference_pairs", "per preference pair")):
        u = cost["per"][unit]
        if u["count"]:
            lines.append(
                f"{label} ({u['count']}): {u['tokens']:.0f} tokens, {u['seconds']:.2f} worker s, "
                f"{u['gpu_seconds']:.2f} gpu s, money {u['money']:.6f}"
            )
        else:
            lines.append(f"{label}: none accepted")
    y = cost.get("yield")
    if y:
        share = f" ({100 * y['sft_per_input']:.0f}%)" if y["sft_per_input"] is not None else ""
        lines.append(
            f"yield: {y['input_rows']} input rows -> {y['sft_rows']} SFT rows{share}, "
            f"{y['preference_pairs']} preference pairs"
        )
    return "\n".join(lines)
