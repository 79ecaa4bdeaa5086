"""tag_normalize's shard summary: the distinct tag sets of a shard's rows and how many rows carry
each (the exact co-occurrence counts), not one tuple per row.

Why sets and not tag + pair counts: a tag's count after a merge is the rows carrying any member of
its group, once per row; a row holding two members ("Python", "python!") counts once, which single
and pair counts cannot tell apart from two rows when groups have three or more members. Distinct
sets are exact; rows repeating a set (InsTag tags are few and skewed) cost one entry. In memory a
shard's sets are CSR arrays over a shard vocabulary: (sets+1,) int64 offsets, int32 tag indices
(sorted within a set), int64 row counts.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def tag_sets(rows_tags: list[tuple[str, ...]]) -> dict:
    """Rows' raw tags -> {"vocab": [tag, first-seen order], "indptr", "indices", "mult"}."""
    vocab: dict[str, int] = {}
    distinct: dict[tuple[int, ...], int] = {}
    for tags in rows_tags:
        key = tuple(sorted({vocab.setdefault(t, len(vocab)) for t in tags}))
        distinct[key] = distinct.get(key, 0) + 1
    lens = np.fromiter((len(k) for k in distinct), dtype=np.int64, count=len(distinct))
    return {
        "vocab": list(vocab),
        "indptr": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        "indices": np.fromiter((t for k in distinct for t in k), dtype=np.int32, count=int(lens.sum())),
        "mult": np.fromiter(distinct.values(), dtype=np.int64, count=len(distinct)),
    }


class TagSets:
    """Every shard's sets over one vocabulary (sets repeated across shards stay separate: counts add).

    set_of: (entries,) int32, the set of each tag entry, ascending; indices: (entries,) int32 tags;
    mult: (sets,) int64 rows per set. counts and pair counts walk the sets CHUNK sets at a time, so
    their int64 temporaries are bounded (~100 MB) rather than ~100 B a row (1 GB at 10M rows)."""

    CHUNK = 1 << 20  # sets

    def __init__(self, vocab: list[str], set_of: np.ndarray, indices: np.ndarray, mult: np.ndarray):
        self.vocab, self.set_of, self.indices, self.mult = vocab, set_of, indices, mult

    @classmethod
    def merge(cls, summaries: list[dict]) -> TagSets:
        vocab: dict[str, int] = {}
        set_of, indices, mult, offset = [], [], [], 0
        for s in summaries:
            glob = np.array([vocab.setdefault(t, len(vocab)) for t in s["vocab"]], dtype=np.int32)
            indices.append(glob[s["indices"]] if len(glob) else s["indices"].astype(np.int32))
            set_of.append(np.repeat(np.arange(len(s["mult"]), dtype=np.int32) + offset, np.diff(s["indptr"])))
            mult.append(s["mult"])
            offset += len(s["mult"])
        if offset >= 2**31:
            raise ValueError(f"tag_normalize: {offset} distinct tag sets; int32 set numbers hold 2^31")

        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

        return cls(list(vocab), cat(set_of, np.int32), cat(indices, np.int32), cat(mult, np.int64))

    def raw_counts(self) -> Counter:
        """Rows carrying each raw tag (first-seen order)."""
        got = np.zeros(len(self.vocab), dtype=np.float64)
        for lo, hi in self.chunks():
            got += np.bincount(
                self.indices[lo:hi], weights=self.mult[self.set_of[lo:hi]], minlength=len(self.vocab)
            )
        return Counter(dict(zip(self.vocab, got.astype(np.int64).tolist(), strict=True)))

    def chunks(self):
        """(lo, hi) entry ranges holding whole sets, CHUNK sets each (set_of is ascending)."""
        bounds = np.searchsorted(self.set_of, np.arange(0, len(self.mult) + self.CHUNK, self.CHUNK))
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            if hi > lo:
                yield lo, hi

    def canonical(self, code: np.ndarray, width: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Entries lo:hi -> (set, canonical index) once per set, sorted by set then tag; dropped gone.
        code: (vocab,) int64 canonical index of each raw tag, -1 when dropped; width: len(names)."""
        c = code[self.indices[lo:hi]]
        keep = c >= 0
        key = np.unique(self.set_of[lo:hi][keep].astype(np.int64) * width + c[keep])
        return key // width, key % width

    def codes(self, mapping: dict, names: list[str]) -> tuple[np.ndarray, int]:
        where = {t: i for i, t in enumerate(names)}
        code = np.array([-1 if mapping[t] is None else where[mapping[t]] for t in self.vocab], dtype=np.int64)
        return code, max(len(names), 1)

    def counts(self, mapping: dict) -> Counter:
        """Rows carrying each current canonical tag (a tag counts once per row)."""
        names = sorted({c for c in mapping.values() if c is not None})
        code, width = self.codes(mapping, names)
        got = np.zeros(len(names), dtype=np.int64)
        for lo, hi in self.chunks():
            sets, tags = self.canonical(code, width, lo, hi)
            got += np.bincount(tags, weights=self.mult[sets], minlength=len(names)).astype(np.int64)
        return Counter({t: c for t, c in zip(names, got.tolist(), strict=True) if c})

    def pair_counts(self, mapping: dict, names: list[str]):
        """(rows with any canonical tag, rows per tag (len(names),), (a, b, rows) per co-occurring
        pair a < b as indices into names)."""
        code, width = self.codes(mapping, names)
        n_rows, single = 0, np.zeros(len(names), dtype=np.int64)
        pair_keys, pair_rows = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        for lo, hi in self.chunks():
            sets, tags = self.canonical(code, width, lo, hi)
            weight = self.mult[sets]
            first = np.ones(len(sets), dtype=bool)
            first[1:] = sets[1:] != sets[:-1]
            n_rows += int(weight[first].sum())
            single += np.bincount(tags, weights=weight, minlength=len(names)).astype(np.int64)
            keys, w = [pair_keys], [pair_rows]
            for d in range(1, int(np.bincount(sets - sets[0]).max(initial=0)) if len(sets) else 0):
                same = sets[d:] == sets[:-d]  # the pairs d apart within a set
                keys.append(tags[:-d][same] * len(names) + tags[d:][same])
                w.append(weight[d:][same])
            pair_keys, inv = np.unique(np.concatenate(keys), return_inverse=True)
            pair_rows = np.bincount(inv, weights=np.concatenate(w), minlength=len(pair_keys)).astype(np.int64)
        return n_rows, single, (pair_keys // len(names), pair_keys % len(names), pair_rows)
