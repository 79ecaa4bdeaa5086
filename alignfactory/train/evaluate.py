"""`alignfactory eval CHECKPOINT... --on RUN_DIR`: a quick before/after evaluation on the rows the
factory held out of training.

Rows: RUN_DIR/sft/holdout.jsonl and RUN_DIR/preference/holdout.jsonl (export's `holdout` fraction);
without them, a deterministic slice (the last `fallback_fraction`) of the train.jsonl files, with a
warning (those rows were trained on: the numbers flatter the model). A held-out row's reference
(seed `answer`, `entry_point` + `tests`, `verifier`) comes from the run's stage shards, matched by
the prompt.

Per model (the `before` model, then each checkpoint): one greedy completion per prompt, then
    math_accuracy        rows with an answer: alignfactory.verify.math (absent -> not reported)
    code_pass_rate       rows with entry_point + tests: fraction of tests passed in the sandbox
    constraint_pass_rate rows with an AutoIF verifier: fraction whose evaluate(response) is True
    reward_mean          every row, if a reward model is given
Writes RUN_DIR/eval/<name>.json and returns the table as text.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from alignfactory.train.online_dpo import VERIFIER_KEYS, load_prompts, prompt_row
from alignfactory.train.scorers import Scorers, kind_of

log = logging.getLogger(__name__)
METRICS = {"math": "math_accuracy", "code": "code_pass_rate", "autoif": "constraint_pass_rate"}


def _key(prompt: list[dict]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)


def references(run_dir: Path) -> dict[str, dict]:
    """prompt -> its verifier fields, from every stage shard of the run (rows carry `seed`)."""
    refs: dict[str, dict] = {}
    for shard in sorted(run_dir.glob("stages/*/shard-*.jsonl")):
        with open(shard, encoding="utf-8") as f:
            next(f, None)  # the {"_shard": stats} header
            for line in f:
                row = json.loads(line)
                if not isinstance(row.get("messages"), list):
                    continue
                try:
                    r = prompt_row(row, str(shard))
                except ValueError:
                    continue
                extra = {k: r[k] for k in VERIFIER_KEYS if k in r}
                if extra:
                    refs.setdefault(_key(r["prompt"]), extra)
    return refs


def holdout_rows(
    run_dir: str | os.PathLike, fallback_fraction: float = 0.1, limit: int | None = None
) -> list[dict]:
    run = Path(run_dir)
    files = [f for f in (run / "sft/holdout.jsonl", run / "preference/holdout.jsonl") if f.is_file()]
    if files:
        rows = load_prompts([str(f) for f in files])
    else:
        train = [f for f in (run / "sft/train.jsonl", run / "preference/train.jsonl") if f.is_file()]
        if not train:
            raise FileNotFoundError(f"{run}: no sft/ or preference/ holdout.jsonl or train.jsonl")
        rows = load_prompts([str(f) for f in train])
        k = max(1, round(len(rows) * fallback_fraction))
        log.warning(
            "%s: no holdout.jsonl (export param `holdout`); evaluating on the last %d of %d "
            "training prompts, which the model has seen",
            run,
            k,
            len(rows),
        )
        rows = rows[-k:]
    refs = references(run)
    rows = [r | refs.get(_key(r["prompt"]), {}) for r in rows]
    return rows[:limit] if limit else rows


def complete(model_path: str, rows: list[dict], max_new_tokens: int, batch: int = 8) -> list[str]:
    """One greedy completion per prompt with transformers (left padding, batches of `batch`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignfactory.train.common import ensure_model

    path = ensure_model(model_path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for i in range(0, len(rows), batch):
        ids = [
            tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
            for r in rows[i : i + batch]
        ]
        enc = tok.pad({"input_ids": [list(x) for x in ids]}, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def evaluate_model(model_path: str, rows: list[dict], scorers: Scorers, max_new_tokens: int) -> dict:
    texts = complete(model_path, rows, max_new_tokens)
    metrics: dict[str, dict] = {}
    kinds = [kind_of(r, False, False) for r in rows]
    for kind, name in METRICS.items():
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if idx:
            scores = getattr(scorers, f"_{kind}")([rows[i] for i in idx], [[texts[i]] for i in idx])
            vals = [s[0] for s in scores if s[0] is not None]
            metrics[name] = {"n": len(vals), "value": sum(vals) / len(vals) if vals else None}
    if scorers.rm_path:
        vals = [s[0] for s in scorers._reward_model(rows, [[t] for t in texts])]
        metrics["reward_mean"] = {"n": len(vals), "value": sum(vals) / len(vals)}
    metrics["mean_response_chars"] = {"n": len(texts), "value": sum(map(len, texts)) / max(1, len(texts))}
    return {
        "metrics": metrics,
        "samples": [
            {"prompt": r["prompt"][-1]["content"], "response": t}
            for r, t in zip(rows[:5], texts[:5], strict=True)
        ],
    }


def evaluate(
    checkpoints: list[str],
    run_dir: str | os.PathLike,
    before: str | None = "runs/models/smollm2-135m-instruct",
    reward_model: str | None = None,
    limit: int | None = 64,
    max_new_tokens: int = 256,
    allow_unsafe: bool = False,
) -> tuple[dict, str]:
    rows = holdout_rows(run_dir, limit=limit)
    scorers = Scorers("auto", reward_model=reward_model, allow_unsafe=allow_unsafe)
    models = ([before] if before else []) + list(checkpoints)
    try:
        results = {m: evaluate_model(m, rows, scorers, max_new_tokens) for m in models}
    finally:
        scorers.close()
    table = render_table(results)
    out = Path(run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    name = Path(checkpoints[-1]).name or "checkpoint"
    (out / f"{name}.json").write_text(json.dumps({"rows": len(rows), "results": results}, indent=1))
    return results, table


def render_table(results: dict) -> str:
    models = list(results)
    names = sorted({k for r in results.values() for k in r["metrics"]})
    head = "| metric | n | " + " | ".join(Path(m).name or m for m in models) + " |"
    lines = [head, "|" + "---|" * (len(models) + 2)]
    for k in names:
        cells = [results[m]["metrics"].get(k, {}) for m in models]
        n = next((c["n"] for c in cells if c), 0)
        fmt = [f"{c['value']:.3f}" if c and c.get("value") is not None else "-" for c in cells]
        lines.append(f"| {k} | {n} | " + " | ".join(fmt) + " |")
    return "\n".join(lines)
