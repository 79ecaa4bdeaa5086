"""Training data per arm, from one sampling run (a pipeline with reject_sample) over the train problems.

    seed_rows(problems, system)         mathset train rows + a system turn: the pipeline's input
    split_seeds(rows, train, eval, seed) a user's seed file instead: held-out eval items + the input rows
    problem_samples(run_dir)            per problem, in input order: prompt, answer, solution, samples
                                        (text, verdict, finish_reason), read from the reject_sample shards
    build(take, problems, ...)          {"sft": [...], "preference": [...], "prompts": [...], "problems",
                                        "correct_rows"} in TRL's conversational formats

Pairing (issue 17): every take of one run uses the same problems P = the problems with at least one
verified sample that ended by itself, in one seeded order, capped at `rows`. Per problem of P:
    verified    one correct sample (random among them, or the shortest: `pick`) -> SFT;
                (that sample, a random incorrect whole sample) -> one DPO pair, when one exists
    unverified  one random whole sample, verdict unseen (it may be right: correct_rows counts how often);
                (that sample, another random whole sample) -> one pair, for the problems where
                verified makes one (so both takes have as many pairs, on the same problems): the pair
                a factory without a verifier would make (its order says nothing about correctness)
    gold        the seed's reference solution ("... The answer is N.")
Problems with no verified sample leave every arm. A cut sample (finish reason not "stop") is never
training data, verified or not. `sft` is the run's own sft/ and preference/ output (a seeded subset).

Curation (a run with a `select` stage placed after the responses are written): `selected` is the rows
the select stage kept; `random` is as many rows drawn at random (seeded) from every row that stage chose
among. Both arms come from one pool with the same responses, the same size: only the choice differs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from alignfactory.run import SHARD_GLOB, read_shard

TAKES = ("verified", "unverified", "gold", "sft", "selected", "random")
VERSION = 2  # of what build() makes from a run (2: unverified pairs); part of each data dir's key
POOL_STAGE = "select"  # the stage whose choice `selected` and `random` compare


def seed_rows(problems: list[dict], system: str | None) -> list[dict]:
    """Pipeline input rows: mathset.train_rows with the system turn the eval prompts also get."""
    from alignfactory.ablate.mathset import train_rows

    rows = train_rows(problems)
    if system:
        for r in rows:
            r["messages"] = [{"role": "system", "content": system}] + r["messages"]
    return rows


def split_seeds(rows: list[dict], n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows as they are, eval items) from a seed file's rows, in one seeded shuffle: the first
    n_eval become eval items {"id", "prompt": messages, answer/entry_point/tests/verifier when the row
    has them}, the next n_train the runs' input. An eval item that leak.find_leaks finds in a training
    row (an exact or contained duplicate of a seed) is dropped, so the eval set may come out smaller."""
    from alignfactory.ablate.leak import find_leaks
    from alignfactory.io import to_messages

    order = list(range(len(rows)))
    _rng(seed, "split").shuffle(order)
    train = [rows[i] for i in order[n_eval : n_eval + n_train]]
    evals = []
    for i in order[:n_eval]:
        msgs = [{"role": m["role"], "content": m["content"]} for m in to_messages(rows[i])]
        if msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        extra = {k: rows[i][k] for k in ("answer", "entry_point", "tests", "verifier") if k in rows[i]}
        evals.append({"id": str(rows[i].get("id", f"seed-{i}")), "prompt": msgs} | extra)
    leaked = {lk["eval_index"] for lk in find_leaks(evals, train)}
    return train, [e for j, e in enumerate(evals) if j not in leaked]


def _rng(seed: int, *key) -> random.Random:
    return random.Random(":".join(map(str, (seed, *key))))  # str seeds hash stably (sha512)


def problem_samples(run_dir: str | Path, stage: str = "reject_sample") -> list[dict]:
    """[{"id", "prompt", "answer", "solution", "samples": [{"text", "verdict", "finish_reason"}]}] for
    every input row the stage sampled (kept or rejected), in input order. Only the model's own samples:
    an input or reference candidate is not a sample."""
    dirs = sorted(Path(run_dir).glob(f"stages/*-{stage}"))
    if not dirs:
        raise FileNotFoundError(f"{run_dir}: no stages/*-{stage} (the run's pipeline needs a {stage} stage)")
    out = []
    for path in sorted(dirs[-1].glob(SHARD_GLOB)):
        for row in read_shard(path)[0]:
            meta = (row.get("meta") or {}).get(stage) or {}
            samples = [s for s in meta.get("samples", []) if s.get("source") == "sample"]
            if not samples:
                continue  # rejected before sampling (no_reference)
            seed = row.get("seed") or {}
            msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
            if msgs[-1]["role"] == "assistant":
                msgs = msgs[:-1]
            out.append(
                {
                    "id": seed.get("id", row["id"]),
                    "line": (row.get("source") or {}).get("line", 0),
                    "prompt": msgs,
                    "answer": seed.get("answer"),
                    "solution": seed.get("solution"),
                    "samples": [
                        {
                            "text": s["text"],
                            "verdict": s.get("verdict"),
                            "finish_reason": s.get("finish_reason"),
                        }
                        for s in samples
                    ],
                }
            )
    return sorted(out, key=lambda p: p["line"])


def whole(p: dict) -> list[dict]:
    return [s for s in p["samples"] if s["finish_reason"] == "stop"]


def verified_problems(problems: list[dict], seed: int, rows: int | None = None) -> list[dict]:
    """P: problems with a correct whole sample, in a seeded order, the first `rows` of it."""
    ok = [p for p in problems if any(s["verdict"] == "correct" for s in whole(p))]
    _rng(seed, "order").shuffle(ok)
    return ok[:rows] if rows else ok


def _sft(prompt: list[dict], text: str) -> dict:
    return {"messages": prompt + [{"role": "assistant", "content": text}]}


def build(
    take: str,
    problems: list[dict],
    seed: int = 0,
    rows: int | None = None,
    pick: str = "random",
    run_dir: str | Path | None = None,
) -> dict:
    """One arm's data (see the module doc). `problems` from problem_samples(run_dir)."""
    if take not in TAKES:
        raise ValueError(f"take: unknown {take!r}; one of {', '.join(TAKES)}")
    if take == "sft":
        return _run_output(Path(run_dir), seed, rows)
    if take in ("selected", "random"):
        return _pool_take(take, Path(run_dir), seed, rows)
    chosen = verified_problems(problems, seed, rows)
    sft, pref, prompts, correct = [], [], [], 0
    for p in chosen:
        samples = whole(p)
        right = [s for s in samples if s["verdict"] == "correct"]
        wrong = [s for s in samples if s["verdict"] in ("incorrect", "no_answer")]
        if take == "verified":
            s = (
                min(right, key=lambda s: len(s["text"]))
                if pick == "shortest"
                else _rng(seed, p["id"], "v").choice(right)
            )
            text = s["text"]
            if wrong:
                bad = _rng(seed, p["id"], "pair").choice(wrong)["text"]
                pref.append({"prompt": p["prompt"], "chosen": [_turn(text)], "rejected": [_turn(bad)]})
        elif take == "unverified":
            s = _rng(seed, p["id"], "u").choice(samples)
            text = s["text"]
            if wrong:  # where verified makes a pair (P has a correct sample): 2+ whole samples
                other = _rng(seed, p["id"], "upair").choice([o for o in samples if o is not s])["text"]
                pref.append({"prompt": p["prompt"], "chosen": [_turn(text)], "rejected": [_turn(other)]})
        else:  # gold
            if not p.get("solution"):
                raise ValueError(f"take gold: problem {p['id']} has no solution field")
            s, text = {"verdict": "correct"}, p["solution"]
        correct += s["verdict"] == "correct"
        sft.append(_sft(p["prompt"], text))
        prompts.append({"prompt": p["prompt"], "answer": p["answer"], "id": p["id"]})
    return {
        "sft": sft,
        "preference": pref,
        "prompts": prompts,
        "problems": [p["id"] for p in chosen],
        "correct_rows": correct,
    }


def _turn(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _run_output(run: Path, seed: int, rows: int | None) -> dict:
    """The run's sft/train.jsonl and preference/train.jsonl: a seeded subset of `rows` of each."""

    def read(name):
        f = run / name / "train.jsonl"
        data = [json.loads(x) for x in f.read_text("utf-8").splitlines() if x.strip()] if f.is_file() else []
        _rng(seed, name).shuffle(data)
        return data[:rows] if rows else data

    sft = [
        {"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
        for r in read("sft")
    ]
    pref = read("preference")
    prompts = [{"prompt": r["messages"][:-1]} for r in sft]
    return {"sft": sft, "preference": pref, "prompts": prompts, "problems": [], "correct_rows": None}


def _pool_take(take: str, run: Path, seed: int, rows: int | None) -> dict:
    """`selected`: the rows the run's select stage kept; `random`: as many from all it chose among."""
    dirs = sorted(run.glob(f"stages/*-{POOL_STAGE}"))
    if not dirs:
        raise FileNotFoundError(f"{run}: no stages/*-{POOL_STAGE} (take {take} needs a {POOL_STAGE} stage)")
    pool = [r for path in sorted(dirs[-1].glob(SHARD_GLOB)) for r in read_shard(path)[0]]
    pool = [r for r in pool if r["messages"][-1]["role"] == "assistant"]  # a row with a response
    if not pool:
        raise ValueError(
            f"{dirs[-1]}: no row with a response (take {take}: place {POOL_STAGE} after generate)"
        )
    kept = [r for r in pool if not r.get("reject")]
    n = min(len(kept), rows) if rows else len(kept)
    chosen = list(kept if take == "selected" else pool)
    _rng(seed, take).shuffle(chosen)
    chosen = chosen[:n]
    sft = [
        {"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in chosen
    ]
    prompts = [{"prompt": r["messages"][:-1]} for r in sft]
    return {
        "sft": sft,
        "preference": [],
        "prompts": prompts,
        "problems": [r["id"] for r in chosen],
        "correct_rows": None,
    }


def count_tokens(rows: list[dict], model_path: str) -> int:
    """Tokens of the rows as trained on (chat template applied): SFT rows whole, a pair's prompt twice."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)

    def n(msgs):
        return len(tok.apply_chat_template(msgs, tokenize=True, return_dict=False))

    total = 0
    for r in rows:
        if "messages" in r:
            total += n(r["messages"])
        else:
            total += n(r["prompt"] + r["chosen"]) + n(r["prompt"] + r["rejected"])
    return total
