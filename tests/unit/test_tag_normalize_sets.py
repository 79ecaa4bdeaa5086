"""tag_normalize on tag-set summaries against the row-tuple code it replaced (kept here as OldTagNormalize):
the same mapping, steps, counts, audit files and rows on randomized tags (case, punctuation, width and
stem variants, repeats), with every step's threshold drawn at random."""

from __future__ import annotations

import copy
import random
from collections import Counter

import numpy as np
import pytest

from alignfactory import records
from alignfactory.stages.base import StageContext
from alignfactory.stages.curate.tag_normalize import TagNormalize, UnionFind, pick
from alignfactory.stages.curate.tag_sets import TagSets


class OldTagNormalize(TagNormalize):
    """summarize/combine/counts/association before the tag-set summaries (commit 024b9df)."""

    def summarize(self, rows: list[dict], shard: int) -> dict:
        return {"rows": [self.row_tags(r) for r in rows]}

    def combine(self, summaries: list) -> dict:
        row_sets = [tags for s in summaries for tags in s["rows"]]
        raw_counts = Counter(t for tags in row_sets for t in tags)
        mapping = {t: t for t in raw_counts}  # raw -> current canonical (None = dropped)
        steps: dict[str, list[str]] = {t: [] for t in raw_counts}

        def remap(step: str, change: dict) -> None:
            for raw, cur in mapping.items():
                if cur is not None and cur in change and change[cur] != cur:
                    mapping[raw] = change[cur]
                    steps[raw].append(step)

        p = self.params
        if p.rule:
            remap("rule", self.rule_groups(raw_counts))
        counts = self.counts(row_sets, mapping)
        if p.frequency and p.alpha > 1:
            remap("frequency", {t: None for t, c in counts.items() if c < p.alpha})
            counts = self.counts(row_sets, mapping)
        if p.semantic and len(counts) > 1:
            remap("semantic", self.semantic_groups(counts))
            counts = self.counts(row_sets, mapping)
        if p.association and len(counts) > 1:
            remap("association", self.association_groups(row_sets, mapping, counts))
            counts = self.counts(row_sets, mapping)
        plan = {"mapping": mapping, "steps": steps, "counts": dict(counts), "raw_counts": dict(raw_counts)}
        if self.ctx.run_dir is not None:
            self.write_audit(plan)
        return plan

    @staticmethod
    def counts(row_sets: list[tuple], mapping: dict) -> Counter:
        """Rows carrying each current canonical tag (a tag counts once per row)."""
        return Counter(c for tags in row_sets for c in {mapping[t] for t in tags} if c is not None)

    def association_groups(self, row_sets: list[tuple], mapping: dict, counts: Counter) -> dict:
        """FP-growth over rows' current tag sets -> 1-to-1 rules above the confidence -> merged groups."""
        import numpy as np
        import pandas as pd
        from mlxtend.frequent_patterns import association_rules, fpgrowth

        p = self.params
        sets = [sorted({mapping[t] for t in tags} - {None}) for tags in row_sets]
        sets = [s for s in sets if s]
        vocab = sorted(counts)
        index = {t: i for i, t in enumerate(vocab)}
        matrix = np.zeros((len(sets), len(vocab)), dtype=bool)  # rows x tags
        for r, tags in enumerate(sets):
            matrix[r, [index[t] for t in tags]] = True
        onehot = pd.DataFrame(matrix, columns=vocab)
        itemsets = fpgrowth(
            onehot, min_support=p.association_min_rows / len(sets), use_colnames=True, max_len=2
        )
        pairs = itemsets[itemsets["itemsets"].map(len) == 2]
        uf = UnionFind(vocab)
        if not pairs.empty:
            rules = association_rules(
                itemsets, num_itemsets=len(sets), metric="confidence", min_threshold=0.0
            )
            conf = {
                (next(iter(a)), next(iter(c))): float(v)
                for a, c, v in zip(
                    rules["antecedents"], rules["consequents"], rules["confidence"], strict=True
                )
                if len(a) == 1 and len(c) == 1
            }
            for (a, b), v in conf.items():
                back = conf.get((b, a), 0.0)
                ok = min(v, back) if p.association_both_ways else max(v, back)
                if a < b and ok >= p.association_confidence:
                    uf.union(a, b)
        return {t: pick(members, counts) for members in uf.groups() for t in members}


BASE = [
    "Math",
    "math!",
    "MATHS",
    "ｍａｔｈ",
    "cooking",
    "Cook",
    "cooks",
    "python programming",
    "Python",
    "旅行规划",
    "旅行规划！",
    "!!!",
    "proof",
    "Proofs",
    "linear algebra",
    "matrices",
    "sport",
    "Sports",
]


class RandomEmbedder:
    def __init__(self, rng):
        self.rng, self.vectors = rng, {}

    def encode(self, texts):
        for t in texts:
            if t not in self.vectors:
                base = (
                    self.rng.choice(list(self.vectors.values()))
                    if self.vectors and self.rng.random() < 0.4
                    else None
                )
                v = np.array([self.rng.gauss(0, 1) for _ in range(4)])
                self.vectors[t] = v if base is None else base + 0.2 * v
        v = np.array([self.vectors[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def random_case(seed):
    rng = random.Random(seed)
    pool = rng.sample(BASE, rng.randint(2, len(BASE))) + [f"x{i}" for i in range(rng.randint(0, 6))]
    rows = []
    for i in range(rng.randint(1, 50)):
        if rows and rng.random() < 0.3:  # a repeated tag set (what the summary folds)
            tags = copy.deepcopy(rng.choice(rows)["meta"]["instag"]["tags"])
        else:
            tags = [{"tag": t} for t in rng.sample(pool, rng.randint(0, min(6, len(pool))))]
        row = records.new_row([{"role": "user", "content": f"q {i}"}], {"file": "t", "line": i})
        row["meta"]["instag"] = {"tags": tags}
        rows.append(row)
    params = {
        "rule": rng.random() < 0.8,
        "stem": rng.random() < 0.7,
        "alpha": rng.choice([1, 1, 2, 3]),
        "semantic": rng.random() < 0.4,
        "semantic_threshold": rng.choice([0.6, 0.8, 0.9]),
        "association": rng.random() < 0.8,
        "association_confidence": rng.choice([0.5, 0.7, 0.9, 1.0]),
        "association_both_ways": rng.random() < 0.6,
        "reject_untagged": rng.random() < 0.3,
    }
    tagged = sum(1 for r in rows if r["meta"]["instag"]["tags"])
    # min_rows above the tagged rows: the old code's FP-growth raised (min_support > 1); not compared
    params["association_min_rows"] = rng.randint(1, max(1, min(3, tagged)))
    cuts = sorted({0, len(rows), *rng.sample(range(len(rows) + 1), rng.randint(0, min(3, len(rows))))})
    return rows, params, cuts


def run(cls, rows, params, cuts, seed, run_dir):
    stage = cls(
        TagNormalize.Params(**params),
        StageContext("tag_normalize", 4, run_dir=run_dir),
        RandomEmbedder(random.Random(seed)),
    )
    rows = copy.deepcopy(rows)
    parts = [rows[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    plan = stage.combine([stage.summarize(p, k) for k, p in enumerate(parts)])
    out = [r for k, p in enumerate(parts) for r in stage.apply(p, plan, k)]
    audit = {f: (run_dir / "tags" / f).read_text() for f in ("vocabulary.jsonl", "mapping.jsonl")}
    return plan, out, audit


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mlxtend, in the old code
@pytest.mark.parametrize("seed", range(200))
def test_tag_set_summaries_normalize_as_the_row_tuples(seed, tmp_path, monkeypatch):
    rows, params, cuts = random_case(seed)
    if seed % 2:  # counts and pair counts walk the sets 2 at a time: chunk edges inside the corpus
        monkeypatch.setattr(TagSets, "CHUNK", 2)
    old = run(OldTagNormalize, rows, params, cuts, seed, tmp_path / "old")
    new = run(TagNormalize, rows, params, cuts, seed, tmp_path / "new")
    assert new[0] == old[0]  # mapping, steps, counts, raw counts
    assert new[1] == old[1] and new[2] == old[2]
