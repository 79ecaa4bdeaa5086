"""dedup at scale: MinHash near-dup throughput against the library used directly, the distributed
path on a large corpus with per-process peak memory and recall of planted duplicates, and semantic
dedup's memory. All ratios are measured in this one run.

    python bench/dedup.py                                  # the real run (1M minhash, 100k semantic)
    python bench/dedup.py --docs 20000 --scale-docs 50000 --semantic-docs 5000    # a quick run

1. Throughput on --docs synthetic docs (EN word docs and ZH character docs, 10% planted near copies):
   library = rensa's own near-dup deduplicator (RMinHashDeduplicator.add_pairs, LSH + threshold,
   keep-first) on the very token sets our stage builds (tokenizing is timed on both sides);
   ours/plain = Dedup(method=minhash)(rows) in one process; ours/ray = the runner's distributed
   path (summarize tasks -> combine -> apply tasks, shard files read and written), Ray warm.
   Goal: ours / library >= 0.9.
2. Scale: --scale-docs docs through Runner (read -> dedup minhash), peak RSS of every process
   (driver and Ray workers, sampled every 0.2 s). Goal < 3 GiB. Recall of planted pairs: a planted
   copy whose true Jaccard with its original (exact, on the same shingle sets) is >= the threshold
   must end in the original's cluster (same kept row). Goal >= 0.95.
3. Semantic: --semantic-docs short texts through Runner (read -> dedup semantic), peak RSS.
4. datatrove (issue 18): the same --scale-docs corpus through datatrove's MinHash pipeline as its
   docs run it (JsonlReader -> signatures; buckets; clusters; JsonlReader -> filter -> JsonlWriter) on
   its LocalPipelineExecutor, 2 workers, as many input tasks as [2] has shards, the same LSH shape
   (32 bands x 4 hashes, word 3-grams, 32-bit hashes), end to end (the corpus split into its task
   files beforehand, untimed). Recall of the planted copies as in [2] (a copy in its original's
   cluster), also per language: datatrove tokenizes words (spaCy's English tokenizer here), our stage
   uses character 3-grams for CJK text. Goal: ours at least as fast at equal or better recall.
   Needs `pip install -e '.[bench]'` (datatrove, spaCy, orjson).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GIB = 1 << 30

ZH_CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"


# ---- synthetic corpus ---------------------------------------------------------------------------------


def synthetic(n: int, seed: int = 0, near: float = 0.1, zh: float = 0.2) -> tuple[list[str], list[tuple]]:
    """n short docs; a share `near` of them are copies of an earlier doc with 1-3 words (EN) or
    2-4 characters (ZH) replaced. Returns (texts, planted [(original, copy)])."""
    rng = random.Random(seed)
    vocab = [
        f"{a}{b}" for a in ("ba", "ko", "mi", "su", "te", "lo", "ri", "an", "ve", "do") for b in range(3000)
    ]
    texts: list[str] = []
    planted: list[tuple[int, int]] = []
    for i in range(n):
        if i > 10 and rng.random() < near:
            j = rng.randrange(max(0, i - 50000), i)  # an earlier doc, anywhere in the last 50k
            orig = texts[j]
            if " " in orig:
                words = orig.split()
                for _ in range(rng.randint(1, 3)):
                    words[rng.randrange(len(words))] = rng.choice(vocab)
                texts.append(" ".join(words))
            else:
                chars = list(orig)
                for _ in range(rng.randint(2, 4)):
                    chars[rng.randrange(len(chars))] = rng.choice(ZH_CHARS)
                texts.append("".join(chars))
            planted.append((j, i))
        elif rng.random() < zh:
            texts.append("".join(rng.choices(ZH_CHARS, k=rng.randint(30, 60))))
        else:
            texts.append(" ".join(rng.choices(vocab, k=rng.randint(25, 50))))
    return texts, planted


def write_input(texts: list[str], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"instruction": t}, ensure_ascii=False) + "\n")
    return path


# ---- memory sampling ----------------------------------------------------------------------------------


class PeakRSS:
    """Peak RSS of this process and every descendant (Ray's raylet, GCS, workers), sampled."""

    def __init__(self, every: float = 0.2):
        import psutil

        self.psutil, self.every = psutil, every
        self.peak: dict[int, tuple[int, str]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        me = self.psutil.Process()
        while not self.stop.is_set():
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                    name = "driver" if p.pid == me.pid else " ".join(p.cmdline()[:3])[:60] or p.name()
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    continue
                if rss > self.peak.get(p.pid, (0, ""))[0]:
                    self.peak[p.pid] = (rss, name)
            time.sleep(self.every)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def report(self, top: int = 6) -> float:
        rows = sorted(self.peak.items(), key=lambda kv: -kv[1][0])
        for pid, (rss, name) in rows[:top]:
            print(f"    pid {pid:>7}  peak RSS {rss / GIB:6.2f} GiB  {name}")
        return rows[0][1][0] / GIB if rows else 0.0


# ---- parts ------------------------------------------------------------------------------------------


def start_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-10 s progress lines


def spec(path: Path, out: Path, params: dict, shard_size: int, resources: dict):
    from alignfactory.spec import validate

    return validate(
        {
            "name": "bench",
            "input": {"path": str(path)},
            "output": str(out),
            "shard_size": shard_size,
            "stages": [{"name": "dedup", "params": params, "resources": resources}],
        }
    )


def throughput(args, tmp: Path) -> None:
    from rensa import RMinHash, RMinHashDeduplicator, RMinHashLSH

    from alignfactory import records, run
    from alignfactory.stages.base import StageContext
    from alignfactory.stages.curate.dedup import Dedup, normalize, shingles

    texts, _ = synthetic(args.docs, seed=1)
    n = len(texts)
    p = Dedup.Params(method="minhash")
    rows = [
        records.new_row([{"role": "user", "content": t}], {"file": "x", "line": i})
        for i, t in enumerate(texts)
    ]

    def library() -> tuple[float, int]:
        t0 = time.perf_counter()
        sets = [shingles(normalize(t), p.word_ngram, p.char_ngram) for t in texts]
        dd = RMinHashDeduplicator(0.7, p.num_perm, True, num_bands=p.bands)
        added = dd.add_pairs([(str(i), s) for i, s in enumerate(sets)])
        return time.perf_counter() - t0, n - sum(1 for a in added if a)

    def library_lsh() -> tuple[float, int]:
        """The library's LSH index used directly, naming the row each duplicate matches (what our
        stage reports): insert-or-query per doc, candidates verified by estimated Jaccard."""
        t0 = time.perf_counter()
        sets = [shingles(normalize(t), p.word_ngram, p.char_ngram) for t in texts]
        mhs = RMinHash.from_token_sets(sets, p.num_perm, p.minhash_seed)
        lsh = RMinHashLSH(0.7, p.num_perm, p.bands)
        dup_of = {}
        for i, m in enumerate(mhs):
            match = next((j for j in lsh.query(m) if mhs[j].jaccard(m) >= 0.7), None)
            if match is None:
                lsh.insert(i, m)
            else:
                dup_of[i] = match
        return time.perf_counter() - t0, len(dup_of)

    def plain() -> tuple[float, int]:
        batch = copy.deepcopy(rows)
        t0 = time.perf_counter()
        out = Dedup(p, StageContext("dedup", 1))(batch)
        return time.perf_counter() - t0, sum(1 for r in out if r["reject"])

    path = write_input(texts, tmp / "throughput.jsonl")

    def through_ray(k: int) -> tuple[float, int]:
        runner = run.Runner(
            spec(
                path,
                tmp / f"tp{k}",
                {"method": "minhash"},
                args.shard_size,
                {"concurrency": 2, "num_cpus": 1},
            )
        )
        run.prepare(runner.steps)
        runner.read()  # not timed: the read stage is not dedup
        t0 = time.perf_counter()
        runner.corpus(runner.steps[1])
        secs = time.perf_counter() - t0
        return secs, json.loads((runner.steps[1].dir / "_SUCCESS").read_text())["rejected"]

    import ray

    start_ray()
    write_input(texts[:2000], tmp / "warm.jsonl")
    warm = run.Runner(spec(tmp / "warm.jsonl", tmp / "warm", {"method": "minhash"}, 500, {"concurrency": 2}))
    warm.run()  # starts the Ray workers and imports rensa in them
    results = {"library": [], "lib_lsh": [], "plain": [], "ray": []}
    for k in range(args.rounds):  # interleaved: this machine is shared and noisy
        results["library"].append(library())
        results["lib_lsh"].append(library_lsh())
        results["plain"].append(plain())
        results["ray"].append(through_ray(k))
    ray.shutdown()
    best = {k: min(v) for k, v in results.items()}
    lib, lib_lsh = n / best["library"][0], n / best["lib_lsh"][0]
    print(
        f"\n[1] MinHash near-dup throughput, {n} docs, num_perm {p.num_perm}, bands {p.bands}, best of {args.rounds}"
    )
    for name, (secs, dups) in best.items():
        rate = n / secs
        print(
            f"    {name:8s} {rate:10.0f} docs/s  ({secs:.2f} s, {dups} rejected)  "
            f"vs library {rate / lib:.2f}  vs lib_lsh {rate / lib_lsh:.2f}"
        )
    breakdown(texts, rows, p)
    print("    library: rensa RMinHashDeduplicator.add_pairs (flags only); lib_lsh: RMinHashLSH insert/query")
    print("    naming the matched row; both tokenize the same way as the stage (timed)")
    print("    ray: 2 summarize/apply tasks on 2 cores, shard files read and written; the others: 1 process")


def breakdown(texts: list[str], rows: list[dict], p) -> None:
    """Where the plain stage's time goes next to the library's, one pass each (us per doc)."""
    import numpy as np
    from rensa import RMinHash, RMinHashLSH

    from alignfactory import records
    from alignfactory.stages.base import StageContext
    from alignfactory.stages.curate.dedup import Dedup, normalize, shingles

    n, parts = len(texts), {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        parts[name] = (time.perf_counter() - t0) / n * 1e6
        return out

    rows = copy.deepcopy(rows)
    stage = Dedup(p, StageContext("dedup", 1))
    timed("row -> text", lambda: [records.instruction(r) for r in rows])
    sets = timed(
        "tokenize (both)", lambda: [shingles(normalize(t), p.word_ngram, p.char_ngram) for t in texts]
    )
    digests = timed("rensa digests as lists", lambda: RMinHash.digests_from_token_sets(sets, p.num_perm, 42))
    timed("lists -> numpy", lambda: np.array(digests, dtype=np.uint32))
    summary = stage.summarize(rows, 0)
    plan = timed("combine (LSH, verify, clusters)", lambda: stage.combine([summary]))
    timed("apply", lambda: stage.apply(rows, plan, 0))
    mhs = timed("library: RMinHash objects", lambda: RMinHash.from_token_sets(sets, p.num_perm, 42))
    lsh = RMinHashLSH(0.7, p.num_perm, p.bands)
    timed("library: LSH insert/query", lambda: [lsh.query(m) or lsh.insert(i, m) for i, m in enumerate(mhs)])
    print("    one pass each, us/doc: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))


def run_distributed(path: Path, out: Path, params: dict, shard_size: int):
    """read -> dedup through the Runner on a fresh local Ray, peak RSS of every process sampled."""
    import ray

    from alignfactory import run

    t0 = time.perf_counter()
    with PeakRSS() as mem:
        start_ray()
        runner = run.Runner(spec(path, out, params, shard_size, {"concurrency": 2, "num_cpus": 1}))
        manifest = runner.run()
        ray.shutdown()
    return time.perf_counter() - t0, runner, manifest, mem


def keepers(runner) -> tuple[dict[int, str], set[int]]:
    """{input line (0-based): the id of the row its cluster kept}, and the rejected lines."""
    from alignfactory import run

    keeper, rejected = {}, set()
    for shard in sorted(runner.steps[1].dir.glob("shard-*.jsonl")):
        for r in run.read_shard(shard)[0]:
            line = r["source"]["line"] - 1
            keeper[line] = r["meta"]["dedup"]["duplicate_of"] if r["reject"] else r["id"]
            if r["reject"]:
                rejected.add(line)
    return keeper, rejected


def make_scale_input(n: int, path: Path) -> tuple[list, list]:
    """In a child process: the corpus file, the planted pairs and their true Jaccard (word/char 3-grams)."""
    from alignfactory.stages.curate.dedup import normalize, shingles

    texts, planted = synthetic(n, seed=2)
    write_input(texts, path)
    truth = []
    for j, i in planted:
        a, b = set(shingles(normalize(texts[j]), 3, 3)), set(shingles(normalize(texts[i]), 3, 3))
        truth.append(len(a & b) / len(a | b))
    return planted, truth


def scale(args, tmp: Path) -> None:
    import multiprocessing

    threshold = args.truth
    path = tmp / "scale.jsonl"
    with multiprocessing.get_context("fork").Pool(1) as pool:  # keeps the corpus out of the driver's RSS
        planted, truth = pool.apply(make_scale_input, (args.scale_docs, path))
    print(
        f"\n[2] distributed minhash dedup: {args.scale_docs} docs, {len(planted)} planted copies, shard "
        f"{args.scale_shard}, stage threshold {args.threshold} (estimated Jaccard), truth cut {args.truth}"
    )
    secs, runner, manifest, mem = run_distributed(
        path, tmp / "scale", {"method": "minhash", "threshold": args.threshold}, args.scale_shard
    )
    st = manifest["stages"][1]
    print(
        f"    {secs:.0f} s end to end (read {manifest['stages'][0]['shards']} shards, dedup {st['rejected']} rejected)"
    )
    worst = mem.report()
    print(
        f"    max peak RSS of any process: {worst:.2f} GiB (driver ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20):.2f} GiB)"
    )
    keeper, rejected = keepers(runner)
    found = [keeper[i] == keeper[j] for j, i in planted]
    should = [f for f, t in zip(found, truth, strict=True) if t >= threshold]
    print(
        f"    recall of planted copies with true Jaccard >= {threshold}: {sum(should) / max(len(should), 1):.4f} "
        f"({sum(should)}/{len(should)}); all planted: {sum(found)}/{len(found)}"
    )
    for lo, hi in ((0.7, 0.8), (0.8, 0.9), (0.9, 1.01)):
        sel = [f for f, t in zip(found, truth, strict=True) if lo <= t < hi]
        if sel:
            print(f"      true Jaccard [{lo:.1f}, {min(hi, 1.0):.1f}): {sum(sel)}/{len(sel)}")
    copies = {i for _, i in planted}
    extra = len(rejected - copies)
    print(f"    rejected rows that are not planted copies: {extra}")
    if args.only in (None, "datatrove"):
        datatrove(args, path, planted, truth, found, secs, len(rejected), extra)


def xxh32_text(data):
    """datatrove 0.10.1 hashes shingle strings, and xxhash 4.x takes bytes only: encode them (UTF-8,
    what older xxhash did). A module-level function, so its task processes unpickle it."""
    import xxhash

    return xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)


def datatrove(args, path: Path, planted, truth, ours_found, ours_secs, ours_rejected, ours_extra) -> None:
    """[4]: datatrove's MinHash pipeline on [2]'s corpus; recall and time next to [2]'s."""
    import gzip
    import importlib.metadata
    import importlib.util
    import shutil

    if importlib.util.find_spec("datatrove") is None:
        print("\n[4] datatrove: not installed (pip install -e '.[bench]'); skipped")
        return
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    tasks = -(-args.scale_docs // args.scale_shard)  # = [2]'s shards
    d = path.parent / "datatrove"
    shutil.rmtree(d, ignore_errors=True)
    (d / "in").mkdir(parents=True)
    with open(path, encoding="utf-8") as f:  # one file per task, ids = 0-based input lines (untimed)
        lines = f.readlines()
    per = -(-len(lines) // tasks)
    for t in range(tasks):
        with open(d / "in" / f"part-{t:05d}.jsonl", "w", encoding="utf-8") as out:
            for i in range(t * per, min(len(lines), (t + 1) * per)):
                text = json.loads(lines[i])["instruction"]
                out.write(json.dumps({"text": text, "id": str(i)}, ensure_ascii=False) + "\n")
    zh = {i for i, x in enumerate(lines) if " " not in json.loads(x)["instruction"]}
    del lines
    # norm_numbers off: its default maps every digit to 0, which would merge this corpus's words
    # ("ba2747" -> "ba0"); our stage keeps digits too
    cfg = MinhashConfig(
        n_grams=3,
        num_buckets=32,
        hashes_per_bucket=4,
        hash_config=HashConfig(precision=32),
        norm_config=TextNormConfig(norm_numbers=False),
    )

    def run(pipeline, n_tasks, workers=2):
        logs = str(d / f"logs-{len(phases)}")  # datatrove's per-task logs and completion markers
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=workers, logging_dir=logs).run()

    sig = MinhashDedupSignature(output_folder=str(d / "sigs"), config=cfg, language="eng")
    sig._hash_func = xxh32_text
    from loguru import logger

    logger.remove()  # datatrove's per-task progress and stats dumps
    phases = {}
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        run([JsonlReader(str(d / "in")), sig], tasks)
        phases["signatures"] = time.perf_counter() - t0
        run([MinhashDedupBuckets(str(d / "sigs"), str(d / "buckets"), config=cfg)], cfg.num_buckets)
        phases["buckets"] = time.perf_counter() - t0 - sum(phases.values())
        run(
            [MinhashDedupCluster(str(d / "buckets"), str(d / "remove"), config=cfg, save_cluster_id=True)],
            1,
            1,
        )
        phases["clusters"] = time.perf_counter() - t0 - sum(phases.values())
        run(
            [
                JsonlReader(str(d / "in")),
                MinhashDedupFilter(
                    str(d / "remove"), exclusion_writer=JsonlWriter(str(d / "removed")), load_cluster_ids=True
                ),
                JsonlWriter(str(d / "kept")),
            ],
            tasks,
        )
        phases["filter + write"] = time.perf_counter() - t0 - sum(phases.values())
    secs = time.perf_counter() - t0
    cluster, removed = {}, set()
    for part in ("kept", "removed"):
        for f in sorted((d / part).glob("*.jsonl.gz")):
            with gzip.open(f, "rt", encoding="utf-8") as fh:
                for x in fh:
                    doc = json.loads(x)
                    i = int(doc["id"])
                    cluster[i] = (doc.get("metadata") or {}).get("minhash_cluster_id")
                    if part == "removed":
                        removed.add(i)
    found = [cluster.get(i) is not None and cluster.get(i) == cluster.get(j) for j, i in planted]
    copies = {i for _, i in planted}
    print(
        f"\n[4] datatrove {importlib.metadata.version('datatrove')} MinHash on [2]'s {args.scale_docs} docs: "
        f"{tasks} tasks, 2 workers, 32 buckets x 4 hashes, word 3-grams"
    )
    print(f"    {secs:.0f} s end to end (" + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + ")")
    worst = mem.report(top=3)
    print(f"    max peak RSS of any process: {worst:.2f} GiB")

    def recall(hits, langs=None):
        sel = [
            h
            for h, t, (_, i) in zip(hits, truth, planted, strict=True)
            if t >= args.truth and (langs is None or (i in zh) == (langs == "zh"))
        ]
        return f"{sum(sel) / max(len(sel), 1):.4f} ({sum(sel)}/{len(sel)})"

    print(
        f"    {'':12s} {'seconds':>8s}  {'speed vs datatrove':>18s}  recall (all / en / zh)  rejected (not planted)"
    )
    for name, hits, t, rej, extra in (
        ("alignfactory", ours_found, ours_secs, ours_rejected, ours_extra),
        ("datatrove", found, secs, len(removed), len(removed - copies)),
    ):
        print(
            f"    {name:12s} {t:8.0f}  {secs / t:17.2f}x  {recall(hits)} / {recall(hits, 'en')} / "
            f"{recall(hits, 'zh')}  {rej} ({extra})"
        )
    print(f"    recall: planted copies with true Jaccard >= {args.truth} found in their original's cluster")


def semantic(args, tmp: Path) -> None:
    from alignfactory.llm.embedded import embedder_path

    # Instructions made of real English words from the embedder's own vocabulary (varied topics, so
    # neighbours are rare), 10% of them planted copies: one word replaced and "please" appended.
    vocab = (Path(embedder_path()) / "vocab.txt").read_text("utf-8").split()
    words = [w for w in vocab if w.isalpha() and w.isascii() and len(w) >= 4]
    verbs = ["Write a poem about", "Describe", "Explain", "Summarize the history of", "List facts about"]
    rng = random.Random(3)
    texts, planted = [], []
    for i in range(args.semantic_docs):
        if i and rng.random() < 0.1:
            j = rng.randrange(i)
            parts = texts[j].split()
            parts[rng.randrange(2, len(parts))] = rng.choice(words)
            texts.append(" ".join(parts) + " please")
            planted.append((j, i))
        else:
            texts.append(f"{rng.choice(verbs)} " + " ".join(rng.choices(words, k=rng.randint(8, 16))))
    path = write_input(texts, tmp / "semantic.jsonl")
    print(
        f"\n[3] distributed semantic dedup: {len(texts)} short texts ({len(planted)} planted copies), "
        f"shard {args.semantic_shard}, cosine >= 0.9"
    )
    secs, runner, manifest, mem = run_distributed(
        path, tmp / "semantic", {"method": "semantic", "threshold": 0.9}, args.semantic_shard
    )
    print(f"    {secs:.0f} s end to end, {manifest['stages'][1]['rejected']} rejected")
    worst = mem.report()
    print(f"    max peak RSS of any process: {worst:.2f} GiB")
    keeper, _ = keepers(runner)
    found = sum(keeper[i] == keeper[j] for j, i in planted)
    print(f"    planted copies in their original's cluster: {found}/{len(planted)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200_000, help="[1] throughput docs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--scale-docs", type=int, default=1_000_000, help="[2] distributed docs")
    ap.add_argument("--scale-shard", type=int, default=20_000)
    ap.add_argument("--threshold", type=float, default=0.65, help="[2] the stage's estimated-Jaccard cut")
    ap.add_argument(
        "--truth", type=float, default=0.7, help="[2] planted pairs with true Jaccard >= this must be found"
    )
    ap.add_argument("--semantic-docs", type=int, default=100_000, help="[3] semantic docs")
    ap.add_argument("--semantic-shard", type=int, default=5_000)
    ap.add_argument("--only", choices=["throughput", "scale", "semantic", "datatrove"], default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ALIGNFACTORY_PROGRESS", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING)
    print(f"bench/dedup.py on {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as d:
        tmp = Path(d)
        for part in (throughput, scale, semantic):
            if args.only in (None, part.__name__) or (args.only == "datatrove" and part is scale):
                part(args, tmp)  # datatrove runs inside scale, on its corpus, next to its numbers


if __name__ == "__main__":
    main()
