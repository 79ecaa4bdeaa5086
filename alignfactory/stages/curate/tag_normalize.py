"""tag_normalize (corpus stage): InsTag's tag normalization (Lu et al. 2023, arXiv:2308.07074, sec. 2.2)
over every tag of the run, each step switchable with its threshold in params, run in this order:

  1. rule aggregation      NFKC (full-width -> half-width), lowercase, special characters -> spaces,
                           English words stemmed (Snowball); tags with the same key merge
  2. frequency filter      tags on fewer than `alpha` rows are dropped (counted after step 1, so
                           "Python" x1 + "python " x1 count as 2: the paper's long-tail cut, not a
                           penalty for spelling variants)
  3. semantic aggregation  the surviving vocabulary embedded (all-MiniLM-L6-v2), agglomerative
                           clustering (average linkage) at cosine similarity >= `semantic_threshold`
  4. association           FP-growth's 1-to-1 rules (max_len 2) from the tag and pair row counts; a
     aggregation           pair whose rule confidence is >= `association_confidence` (both ways by
                           default) on >= `association_min_rows` rows merges
Every merge maps a group to its most frequent member (ties: shorter, then alphabetical).

summarize(rows, shard) -> the shard's distinct raw-tag sets and how many rows carry each (tag_sets.py:
CSR arrays over a shard vocabulary, never one tuple per row); combine() works on the vocabulary and
those sets (counts by bincount, pairs by offset within a set) and builds the mapping raw ->
canonical (None = dropped) and, when ctx.run_dir is set, writes <run_dir>/tags/vocabulary.jsonl ({"tag", "count", "members"}) and tags/mapping.jsonl
({"raw", "canonical", "step", "steps", "count"}); apply() puts meta.tag_normalize.tags
(canonical tags, first-seen order) on each row. A row whose tags all vanish is kept with tags [],
unless reject_untagged is true (then rejected as "no_tags_after_normalization").
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter

from pydantic import BaseModel, Field

from alignfactory import io
from alignfactory.stages.base import CorpusStage
from alignfactory.stages.curate.tag_sets import TagSets, tag_sets

SPECIAL = re.compile(r"[^\w\s]|_")  # punctuation and symbols; CJK characters are \w and stay
LATIN_WORD = re.compile(r"[a-z]+")


def clean(tag: str) -> str:
    """Full-width -> half-width (NFKC), lowercase, special characters -> one space."""
    return " ".join(SPECIAL.sub(" ", unicodedata.normalize("NFKC", tag).casefold()).split())


def pick(members, counts: Counter) -> str:
    """The canonical member of a group: most frequent, then shorter, then alphabetical."""
    return min(members, key=lambda t: (-counts[t], len(t), t))


class UnionFind:
    def __init__(self, items):
        self.parent = {x: x for x in items}

    def find(self, x):
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)

    def groups(self) -> list[list]:
        out: dict = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return list(out.values())


class TagNormalize(CorpusStage):
    class Params(BaseModel, extra="forbid"):
        source: str = "instag"  # meta key holding {"tags": [{"tag", ...}]}
        rule: bool = True
        stem: bool = True  # Snowball English stemming inside rule aggregation
        frequency: bool = True
        alpha: int = Field(1, ge=1)  # a tag on fewer rows is dropped (InsTag used 20 on 1.7M tags)
        semantic: bool = True
        semantic_threshold: float = Field(0.9, gt=0, le=1)  # cosine similarity to merge
        association: bool = True
        association_confidence: float = Field(0.95, gt=0, le=1)
        association_min_rows: int = Field(2, ge=1)  # rows a pair must share (FP-growth min support)
        association_both_ways: bool = True  # conf(A->B) and conf(B->A) >= threshold
        reject_untagged: bool = False

    requires = {"meta.instag.tags": "tags from the instag stage (or params.source)"}
    adds = ("meta.tag_normalize",)
    streams_summaries = True  # combine reads each shard's tag sets once, into TagSets.merge

    def __init__(self, params, ctx, embedder=None):
        super().__init__(params, ctx)
        self._embedder = embedder  # tests hand one in; else built on first use (combine only)

    # -- per shard ----------------------------------------------------------------------------------

    def row_tags(self, row: dict) -> tuple[str, ...]:
        tags = row["meta"].get(self.params.source, {}).get("tags") or []
        out = []
        for t in tags:
            tag = t.get("tag") if isinstance(t, dict) else t
            if isinstance(tag, str) and tag.strip() and tag not in out:
                out.append(tag)
        return tuple(out)

    def summarize(self, rows: list[dict], shard: int) -> dict:
        return tag_sets([self.row_tags(r) for r in rows])

    # -- in one place -------------------------------------------------------------------------------

    def combine(self, summaries: list) -> dict:
        sets = TagSets.merge(summaries)
        raw_counts = sets.raw_counts()
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
        counts = sets.counts(mapping)
        if p.frequency and p.alpha > 1:
            remap("frequency", {t: None for t, c in counts.items() if c < p.alpha})
            counts = sets.counts(mapping)
        if p.semantic and len(counts) > 1:
            remap("semantic", self.semantic_groups(counts))
            counts = sets.counts(mapping)
        if p.association and len(counts) > 1:
            remap("association", self.association_groups(sets, mapping, counts))
            counts = sets.counts(mapping)
        plan = {"mapping": mapping, "steps": steps, "counts": dict(counts), "raw_counts": dict(raw_counts)}
        if self.ctx.run_dir is not None:
            self.write_audit(plan)
        return plan

    def rule_groups(self, raw_counts: Counter) -> dict:
        """raw -> its group's canonical cleaned form; the group key is the cleaned, stemmed form."""
        stem = None
        if self.params.stem:
            import snowballstemmer

            stem = snowballstemmer.stemmer("english").stemWord
        cleaned = {t: clean(t) for t in raw_counts}
        cleaned_counts = Counter()
        for t, c in cleaned.items():
            cleaned_counts[c] += raw_counts[t]
        key = {c: LATIN_WORD.sub(lambda m: stem(m.group()), c) if stem else c for c in cleaned_counts}
        groups: dict[str, list[str]] = {}
        for c in cleaned_counts:
            groups.setdefault(key[c], []).append(c)
        canon = {c: pick(members, cleaned_counts) for members in groups.values() for c in members}
        return {t: canon[cleaned[t]] or None for t in raw_counts}  # "!!!" cleans to "": dropped

    def semantic_groups(self, counts: Counter) -> dict:
        from sklearn.cluster import AgglomerativeClustering

        vocab = sorted(counts)
        vecs = self.embedder.encode(vocab)  # (V, dim), L2-normalized
        labels = AgglomerativeClustering(
            n_clusters=None,
            metric="cosine",
            linkage="average",
            distance_threshold=1.0 - self.params.semantic_threshold,
        ).fit_predict(vecs)
        groups: dict[int, list[str]] = {}
        for tag, label in zip(vocab, labels, strict=True):
            groups.setdefault(int(label), []).append(tag)
        return {t: pick(members, counts) for members in groups.values() for t in members}

    def association_groups(self, sets: TagSets, mapping: dict, counts: Counter) -> dict:
        """1-to-1 association rules over the rows' current tag sets -> merged groups. The supports
        and confidences are FP-growth's (mlxtend, max_len 2) from tag and pair row counts:
        support = rows / N (N: rows with a tag), conf(a -> b) = support(ab) N / (support(a) N), the
        very float operations of mlxtend 0.25's association_rules (a 0.9 on the line stays 0.9)."""
        p = self.params
        vocab = sorted(counts)
        n_rows, single, (a, b, both) = sets.pair_counts(mapping, vocab)
        min_support = p.association_min_rows / n_rows
        minsup = math.ceil(min_support * n_rows)  # FP-growth's conditional trees cut at this count
        uf = UnionFind(vocab)
        frequent = (both / n_rows >= min_support) & (both >= minsup)
        for x, y, ab in zip(a[frequent].tolist(), b[frequent].tolist(), both[frequent].tolist(), strict=True):
            s_ab, s_x, s_y = ab / n_rows, single[x] / n_rows, single[y] / n_rows
            there, back = (s_ab * n_rows) / (s_x * n_rows), (s_ab * n_rows) / (s_y * n_rows)
            ok = min(there, back) if p.association_both_ways else max(there, back)
            if ok >= p.association_confidence:
                uf.union(vocab[x], vocab[y])
        return {t: pick(members, counts) for members in uf.groups() for t in members}

    @property
    def embedder(self):
        if self._embedder is None:
            from alignfactory.llm.embed import Embedder

            self._embedder = Embedder()
        return self._embedder

    def write_audit(self, plan: dict) -> None:
        mapping, counts = plan["mapping"], plan["counts"]
        members: dict[str, list[str]] = {}
        for raw, canon in mapping.items():
            if canon is not None:
                members.setdefault(canon, []).append(raw)
        vocab = [
            {"tag": t, "count": counts[t], "members": sorted(members[t])}
            for t in sorted(counts, key=lambda t: (-counts[t], t))
        ]
        rows = [
            {
                "raw": raw,
                "canonical": canon,
                "step": plan["steps"][raw][-1] if plan["steps"][raw] else "kept",
                "steps": plan["steps"][raw],
                "count": plan["raw_counts"][raw],
            }
            for raw, canon in sorted(mapping.items())
        ]
        out = self.ctx.run_dir / "tags"
        out.mkdir(parents=True, exist_ok=True)
        io.write_jsonl_atomic(out / "vocabulary.jsonl", vocab)
        io.write_jsonl_atomic(out / "mapping.jsonl", rows)

    # -- per shard ----------------------------------------------------------------------------------

    def apply(self, rows: list[dict], plan: dict, shard: int) -> list[dict]:
        mapping = plan["mapping"]
        for row in rows:
            raw = self.row_tags(row)
            tags = list(dict.fromkeys(mapping[t] for t in raw if mapping.get(t) is not None))
            self.meta(row)["tags"] = tags
            if not tags and self.params.reject_untagged:
                why = (
                    "no tags"
                    if not raw
                    else f"all {len(raw)} tags dropped: {json.dumps(raw, ensure_ascii=False)}"
                )
                self.reject(row, f"no_tags_after_normalization: {why}")
        return rows
