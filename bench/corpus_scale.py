"""Corpus stages at scale (issue 18 item 5): tag_normalize, select, exact and MinHash dedup and
decontaminate through the Runner on a local 2-CPU Ray, on synthetic corpora of each --sizes rows.
Per stage: seconds (summarize -> combine -> apply, shard files read and written) and the peak RSS of
every process (driver, Ray workers; sampled every 0.2 s). Goal: every process < 3 GiB, and time
growing no worse than n log n: the ratio t(big)/t(small) is printed next to (big/small) x
log(big)/log(small), the n log n growth.

    python bench/corpus_scale.py                          # 100k and 1M rows
    python bench/corpus_scale.py --sizes 1000000 10000000  # the issue's sizes (10M: hours here)

Rows: bench/dedup.py's synthetic docs (EN words and ZH characters, 10% planted near copies) plus 2%
exact copies; tags: 1-6 a row from a Zipf(1.3) draw over 4000 tags, 10% spelled as variants ("Tag
12!", "TAG 12") so rule aggregation merges them. The tags are put where instag puts them
(meta.instag.tags) by rewriting the read stage's shards (untimed). tag_normalize runs with semantic
aggregation off (it embeds the vocabulary only, not the rows: a model load, not a scale question);
select with richness off (embedding 10M texts on 2 cores is hours), fraction 0.5, coverage pass on;
decontaminate against 300 items, 100 of them copied from the corpus.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.dedup import PeakRSS, start_ray, synthetic  # noqa: E402

STAGES = [
    ("tag_normalize", {"semantic": False, "alpha": 2}),
    ("select", {"fraction": 0.5}),
    ("dedup", {"method": "exact"}),
    ("dedup", {"method": "minhash", "threshold": 0.7}),
    ("decontaminate", None),  # params made per run (the benchmark file)
]
LABELS = ["tag_normalize", "select", "dedup exact", "dedup minhash", "decontaminate"]


def make_input(n: int, path: Path, bench: Path) -> None:
    """In a child process (keeps the corpus out of the driver's RSS): the corpus and the benchmark."""
    texts, _ = synthetic(n, seed=5)
    rng = np.random.default_rng(5)
    copies = rng.random(n) < 0.02
    src = rng.integers(0, np.maximum(np.arange(n), 1))
    lens = rng.integers(1, 7, n)
    draws = (rng.zipf(1.3, int(lens.sum())) - 1) % 4000
    variant = rng.random(int(lens.sum())) < 0.1
    pos = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = texts[int(src[i])] if copies[i] and i else texts[i]
            end = pos + int(lens[i])
            pairs = zip(draws[pos:end].tolist(), variant[pos:end].tolist(), strict=True)
            tags = [(f"Tag {t}!" if t % 2 else f"TAG {t}") if v else f"tag {t}" for t, v in pairs]
            pos = end
            f.write(json.dumps({"instruction": text, "tags": tags}, ensure_ascii=False) + "\n")
    r = random.Random(5)
    items = [texts[r.randrange(n)] for _ in range(100)]
    items += [" ".join(f"bench{r.randrange(10**6)}" for _ in range(30)) for _ in range(200)]
    with open(bench, "w", encoding="utf-8") as f:
        for t in items:
            f.write(json.dumps({"prompt": t}, ensure_ascii=False) + "\n")


def plant_tags(path: str) -> None:
    """Read shard -> the same shard with meta.instag.tags from the row's seed (instag's place)."""
    from alignfactory.run.shards import read_shard, write_shard

    rows, stats = read_shard(Path(path))
    for r in rows:
        tags = (r.get("seed") or {}).get("tags") or []
        r["meta"]["instag"] = {"tags": [{"tag": t, "explanation": ""} for t in tags]}
    write_shard(Path(path), rows, stats)


def prepare_size(n: int, tmp: Path, shard_size: int):
    """The corpus, the read stage's shards with tags planted (untimed; before Ray starts)."""
    from alignfactory import run
    from alignfactory.spec import validate

    path, bench = tmp / f"corpus-{n}.jsonl", tmp / f"bench-{n}.jsonl"
    ctx = multiprocessing.get_context("fork")
    t0 = time.perf_counter()
    with ctx.Pool(1) as pool:
        pool.apply(make_input, (n, path, bench))
    stages = []
    for name, params in STAGES:
        params = params or {"benchmarks": [{"path": str(bench)}], "on": "instruction"}
        stages.append({"name": name, "params": params, "resources": {"concurrency": 2, "num_cpus": 1}})
    spec = {"name": "scale", "input": {"path": str(path)}, "output": str(tmp / f"run-{n}")}
    runner = run.Runner(validate(spec | {"shard_size": shard_size, "stages": stages}))
    run.prepare(runner.steps)
    runner.read()
    shards = sorted(str(p) for p in runner.steps[0].dir.glob("shard-*.jsonl"))
    with ctx.Pool(2) as pool:
        pool.map(plant_tags, shards)
    print(
        f"  {n} rows: input + read + tags planted in {time.perf_counter() - t0:.0f} s, {len(shards)} shards"
    )
    return runner


def one_size(n: int, runner, quiet: bool = False) -> dict[str, tuple[float, float]]:
    out = {}
    for label, step in zip(LABELS, runner.steps[1:], strict=True):
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            runner.corpus(step)
        secs = time.perf_counter() - t0
        rss, who = max(mem.peak.values(), default=(0, "-"))
        worst = rss / (1 << 30)
        who = "driver" if who == "driver" else "worker"  # a Ray worker's cmdline names no stage
        done = json.loads((step.dir / "_SUCCESS").read_text())
        if not quiet:
            print(
                f"    {n:>9d} {label:14s} {secs:8.1f} s  peak RSS {worst:5.2f} GiB {who:6s} "
                f"({done.get('rows_in')} rows in, {done.get('rejected')} rejected)",
                flush=True,
            )
        out[label] = (secs, worst)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--shard-size", type=int, default=50_000)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ALIGNFACTORY_PROGRESS", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    print(f"bench/corpus_scale.py on {os.cpu_count()} CPUs, shard {args.shard_size} rows")
    import ray

    results = {}
    with tempfile.TemporaryDirectory(prefix="corpus-scale-") as d:
        warm = prepare_size(2000, Path(d), 1000)
        runners = {n: prepare_size(n, Path(d), args.shard_size) for n in args.sizes}
        start_ray()
        one_size(2000, warm, quiet=True)  # Ray workers started, modules imported: not timed below
        for n in args.sizes:
            results[n] = one_size(n, runners[n])
        ray.shutdown()
    sizes = sorted(results)
    for small, big in zip(sizes, sizes[1:], strict=False):
        k = big / small
        nlogn = k * math.log(big) / math.log(small)
        print(f"\n  growth {big} / {small} rows: n log n allows x{nlogn:.1f} (linear x{k:.0f})")
        for label in LABELS:
            ratio = results[big][label][0] / max(results[small][label][0], 1e-9)
            verdict = "ok" if ratio <= nlogn else "WORSE than n log n"
            print(f"    {label:14s} x{ratio:6.1f}  {verdict}")
    worst = max(rss for r in results.values() for _, rss in r.values())
    print(f"\n  max peak RSS of any process, any stage, any size: {worst:.2f} GiB (goal < 3)")


if __name__ == "__main__":
    main()
