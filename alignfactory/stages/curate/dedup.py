"""dedup (corpus stage): exact, near (MinHash LSH) or semantic (SemDeDup-style) duplicates.

One row is kept per duplicate cluster (param keep: first in input order, or longest text); the
others are rejected naming the id they duplicate and the similarity. What is compared (param on):
"instruction" = every user turn of the conversation, in order (user_turns; a single-turn row is its
one instruction), so two conversations that both end in "thanks" or "continue" but differ earlier
stay distinct; "conversation" = every message, roles included. Scales as map -> combine -> apply:

    summarize(rows, shard) -> {"ids": (n,) S16, "lengths": (n,) int32, + per method:
        exact:    "keys" (n,) uint64        first 8 bytes of sha256 of the normalized text
        minhash:  "sig"  (n, num_perm) uint32   rensa RMinHash signatures of the text's shingles
        semantic: "emb"  (n, dim) float16    L2-normalized all-MiniLM-L6-v2 embeddings}
    combine(summaries) -> candidate pairs -> verified (sim >= threshold) -> connected components
        (union-find) -> per cluster the kept row -> plan {"shards": {shard: {pos: detail}}};
        it reads the summaries one at a time (minhash keeps 32-bit band keys, 1/4 of a signature,
        and re-reads signatures for candidate rows only), so the driver holds ~130 B a row at most
    apply(rows, plan, shard) -> marks the rows the plan names.

MinHash (Broder 1997) + LSH banding (Leskovec et al., MMDS ch. 3): the signature is cut into
`bands` bands of num_perm/bands rows; two texts whose band values agree in any band are candidates,
and a candidate pair is kept when its estimated Jaccard (share of equal signature values) reaches
`threshold`. Shingles: word n-grams for space-delimited text, character n-grams when the text holds
CJK characters (Chinese/Japanese, or mixed with Latin). Semantic (Abbas et al. 2023, SemDeDup):
spherical k-means over the embeddings (faiss), then cosine in blocks between each row and the
members of its `probe` nearest clusters (a pair split by a cluster boundary is still compared).
"""

from __future__ import annotations

import array
import hashlib
import re
import unicodedata
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from alignfactory.stages.base import CorpusStage

WORD = re.compile(r"\w+")
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
DEFAULT_THRESHOLD = {"exact": 1.0, "minhash": 0.7, "semantic": 0.9}
PAIR_BLOCK = 65536  # candidate pairs verified per numpy step (x num_perm x 4 B x 2)
SIM_BLOCK = 1024  # rows per block of a cluster's cosine matrix (block x cluster size x 4 B)


def normalize(text: str) -> str:
    """NFKC (full-width -> ASCII forms), case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def user_turns(row: dict) -> list[str]:
    """The text of every user turn, in order: what `on: instruction` compares (dedup) and what select
    rates and embeds. Only the last turn (records.instruction) would make every conversation ending in
    "thanks" one duplicate cluster."""
    return [m["content"] for m in row["messages"] if m["role"] == "user"]


def units(text: str) -> tuple[list[str], str]:
    """Normalized text -> (units, joiner): words for space-delimited text, characters (no spaces or
    punctuation) when the text holds any CJK character, which has no spaces between words."""
    if CJK.search(text):
        return [c for c in text if c.isalnum()], ""
    return WORD.findall(text), " "


def shingles(text: str, n: int, char_n: int) -> list[str]:
    """n-grams of units(text); a text shorter than n units is one shingle (itself)."""
    toks, joiner = units(text)
    k = char_n if joiner == "" else n
    if len(toks) <= k:
        return [joiner.join(toks)]
    return [joiner.join(g) for g in zip(*(toks[i:] for i in range(k)), strict=False)]  # sliding windows


class Dedup(CorpusStage):
    class Params(BaseModel, extra="forbid"):
        method: Literal["exact", "minhash", "semantic"] = "exact"
        on: Literal["instruction", "conversation"] = "instruction"  # all user turns | all messages
        keep: Literal["first", "longest"] = "first"  # the row kept per cluster (ties: first)
        threshold: float | None = Field(None, gt=0, le=1)  # minhash Jaccard 0.7 / semantic cosine 0.9
        num_perm: int = Field(128, ge=8)  # MinHash permutations
        bands: int = Field(32, ge=1)  # LSH bands; num_perm/bands values per band
        word_ngram: int = Field(3, ge=1)  # shingle size for space-delimited text, words
        char_ngram: int = Field(3, ge=1)  # shingle size for CJK/mixed text, characters
        minhash_seed: int = 42
        cluster_size: int = Field(2000, ge=2)  # semantic: mean rows per k-means cluster
        probe: int = Field(2, ge=1)  # semantic: nearest clusters each row is compared within
        max_neighbors: int = Field(32, ge=1)  # semantic: pairs kept per row
        embed_batch_size: int = Field(64, ge=1)
        embedder: str | None = None  # a local sentence-transformers dir; None = all-MiniLM-L6-v2 (English)

        @model_validator(mode="after")
        def _bands_divide(self):
            if self.num_perm % self.bands:
                raise ValueError(f"bands ({self.bands}) must divide num_perm ({self.num_perm})")
            return self

    requires = {"messages": "a conversation with a user turn"}
    adds = ("reject", "meta.dedup")

    streams_summaries = True  # minhash signatures are 512 B a row: 2.5 GB at 5M rows

    @staticmethod
    def uses_model(params) -> bool:
        """The runner runs summarize in actors (and on a GPU when resources give one) for embeddings."""
        return params.method == "semantic"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.threshold = params.threshold or DEFAULT_THRESHOLD[params.method]
        self._embedder = None

    # -- text

    def text(self, row: dict) -> str:
        if self.params.on == "instruction":
            return "\n".join(user_turns(row))  # one turn: the instruction itself, as before
        return "\n".join(m["content"] for m in row["messages"])

    def exact_key(self, row: dict) -> bytes:
        if self.params.on == "instruction":  # one turn: the key of its normalized text, as before
            text = "\x1e".join(normalize(t) for t in user_turns(row))
        else:  # roles are part of the key: a user turn is not an assistant turn with the same words
            text = "\x1e".join(f"{m['role']}\x1f{normalize(m['content'])}" for m in row["messages"])
        return hashlib.sha256(text.encode("utf-8")).digest()[:8]

    # -- map: one shard -> small arrays

    def summarize(self, rows: list[dict], shard: int) -> dict:
        p = self.params
        texts = [self.text(r) for r in rows]
        out = {
            "ids": np.array([r["id"] for r in rows], dtype="S16"),
            "lengths": np.array([len(t) for t in texts], dtype=np.int32),
        }
        if p.method == "exact":
            out["keys"] = np.frombuffer(b"".join(self.exact_key(r) for r in rows), dtype=np.uint64)
        elif p.method == "minhash":
            from rensa import RMinHash

            sets = [shingles(normalize(t), p.word_ngram, p.char_ngram) for t in texts]
            flat = array.array("I")  # rensa hands out lists; array.extend is ~1.5x np.array on them
            for d in RMinHash.digests_from_token_sets(sets, p.num_perm, p.minhash_seed):
                flat.extend(d)
            out["sig"] = np.frombuffer(flat, dtype=np.uint32).reshape(len(rows), p.num_perm)
        else:
            out["emb"] = self.embedder().encode(texts).astype(np.float16)
        return out

    def embedder(self):
        if self._embedder is None:
            import torch

            from alignfactory.llm.embed import Embedder

            device = "cuda" if torch.cuda.is_available() else "cpu"  # a GPU only where Ray gave one
            self._embedder = Embedder(self.params.embedder, self.params.embed_batch_size, device=device)
        return self._embedder

    # -- combine: summaries -> plan

    def combine(self, summaries) -> dict:
        """summaries: a sequence read once in shard order (the runner's SummaryFiles loads each file
        on access, so only one shard's signatures are held at a time); minhash reads the shards that
        hold candidate rows a second time, for those rows' signatures only."""
        ids, lengths, keys, bands, emb = [], [], [], [], []
        method, p = self.params.method, self.params
        for s in summaries:
            ids.append(s["ids"])
            lengths.append(s["lengths"])
            if method == "exact":
                keys.append(s["keys"])
            elif method == "minhash":
                bands.append(band_keys32(s["sig"], p.bands))
            else:
                emb.append(s["emb"])
            del s
        sizes = [len(x) for x in ids]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        ids = np.concatenate(ids) if ids else np.zeros(0, "S16")
        lengths = np.concatenate(lengths) if lengths else np.zeros(0)
        if len(ids) < 2:
            a = b = np.zeros(0, np.int64)
            sim = np.zeros(0, np.float32)
        elif method == "exact":
            a, b, sim = exact_pairs(np.concatenate(keys))
        elif method == "minhash":
            a, b = band_candidates(bands)
            del bands
            sim = estimated_jaccard(*candidate_signatures(summaries, offsets, a, b))
        else:
            a, b, sim = semantic_pairs(np.concatenate(emb), self.threshold, self.params, seed=self.ctx.seed)
        good = sim >= self.threshold - 1e-6
        a, b, sim = a[good], b[good], sim[good]
        dupes = resolve_clusters(len(ids), a, b, sim, lengths, self.params.keep)
        shards: dict[int, dict[int, dict]] = {}
        for i, (keeper, via, s) in dupes.items():
            shard = int(np.searchsorted(offsets, i, side="right") - 1)
            detail = {"id": ids[i].decode(), "duplicate_of": ids[keeper].decode(), "similarity": s}
            if via != keeper:
                detail["via"] = ids[via].decode()
            shards.setdefault(shard, {})[i - int(offsets[shard])] = detail
        return {"method": method, "threshold": self.threshold, "rows": int(len(ids)), "shards": shards}

    # -- apply: mark this shard's duplicates

    def touched(self, plan: dict, shard: int) -> list[int]:
        return sorted(plan["shards"].get(shard, {}))

    def apply(self, rows: list[dict], plan: dict, shard: int) -> list[dict]:
        for pos, d in plan["shards"].get(shard, {}).items():
            row = rows[pos]
            if row["id"] != d["id"]:
                raise RuntimeError(f"dedup plan does not match shard {shard} at row {pos}: {row['id']}")
            if plan["method"] == "exact":
                self.meta(row)["duplicate_of"] = d["duplicate_of"]
                self.reject(row, f"duplicate of {d['duplicate_of']}")
                continue
            measure = "minhash jaccard" if plan["method"] == "minhash" else "cosine"
            info = {"duplicate_of": d["duplicate_of"], "similarity": round(d["similarity"], 4)}
            via = f" with {d['via']}" if "via" in d else ""
            if via:
                info["via"] = d["via"]
            self.meta(row).update(info | {"method": plan["method"]})
            self.reject(row, f"duplicate of {d['duplicate_of']} ({measure} {d['similarity']:.2f}{via})")
        return rows


# ---- pairs ----------------------------------------------------------------------------------------


def group_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with equal keys -> pairs (first member, each other member) and (previous, next member),
    members in input order; 2(k-1) pairs per group of k rather than k(k-1)/2.

    Keys are well-mixed 64-bit hashes, so a row whose top-bits bucket holds no other row has no
    equal key: only the rows in shared buckets (~1/8 of random keys, at 4+ buckets per row) are
    sorted, which is what makes 32 bands x 1M rows cheap."""
    if len(keys) > 4096:
        bits = int(np.ceil(np.log2(len(keys)))) + 3  # >= 8 buckets per key: ~12% share one by chance
        bucket = (keys >> np.uint64(64 - bits)).astype(np.int64)
        shared = np.flatnonzero(np.bincount(bucket, minlength=1 << bits)[bucket] > 1)  # ascending
        a, b = _sorted_group_pairs(keys[shared])
        return shared[a], shared[b]
    return _sorted_group_pairs(keys)


def _sorted_group_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    same = sk[1:] == sk[:-1]  # position j+1 continues the group of j
    if not same.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.concatenate([[True], ~same])
    first = order[np.maximum.accumulate(np.where(starts, np.arange(len(sk)), 0))]
    nxt = order[1:][same]
    star = np.stack([first[1:][same], nxt])
    chain = np.stack([order[:-1][same], nxt])
    pairs = np.concatenate([star, chain], axis=1).astype(np.int64)
    return pairs[0], pairs[1]


def unique_pairs(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    code = np.unique(lo[lo != hi] * n + hi[lo != hi])
    return code // n, code % n


def exact_pairs(keys: np.ndarray):
    a, b = group_pairs(keys)
    a, b = unique_pairs(a, b, len(keys))
    return a, b, np.ones(len(a), np.float32)


def band_keys32(sig: np.ndarray, bands: int) -> np.ndarray:
    """(n, bands) uint32: per band, its num_perm/bands signature values mixed into one key (equal
    values -> equal keys). 32 bits, a quarter of the signature's bytes: two rows of different values
    share a key by chance ~n^2/2^33 times a band (~3k pairs a band at 5M rows), and verification
    drops those pairs."""
    rows = sig.shape[1] // bands
    words = np.ascontiguousarray(sig)
    # two uint32 values per uint64 word where a band's values pair up: half the mixing steps
    words = words.view(np.uint64) if rows % 2 == 0 else words.astype(np.uint64)
    words = words.reshape(len(sig), bands, words.shape[1] // bands)  # (n, bands, words a band)
    h = np.full((len(sig), bands), 0xCBF29CE484222325, dtype=np.uint64)
    for c in range(words.shape[2]):  # every band at once: 4x faster than band by band
        h ^= words[:, :, c]
        h *= np.uint64(0x100000001B3)
        h ^= h >> np.uint64(29)
    return (h >> np.uint64(32)).astype(np.uint32)


def band_candidates(bands: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per shard (n_s, bands) uint32 keys -> the unique candidate pairs (a < b, global row numbers):
    rows whose keys agree in any band. One band's keys (n uint64) are held at a time, and the pairs
    are made unique band by band, so memory follows the candidates, not bands x rows."""
    n = sum(len(x) for x in bands)
    codes = np.zeros(0, np.int64)
    for j in range(bands[0].shape[1] if bands else 0):
        # the 32-bit key in the top bits: group_pairs buckets rows by their keys' top bits
        keys = np.concatenate([x[:, j] for x in bands]).astype(np.uint64) << np.uint64(32)
        a, b = unique_pairs(*group_pairs(keys), n)
        codes = np.union1d(codes, a * n + b)
    return codes // n, codes % n


def candidate_signatures(summaries, offsets: np.ndarray, a: np.ndarray, b: np.ndarray):
    """The signatures of the rows in candidate pairs, read shard by shard (only the shards that hold
    such a row are loaded again, and only those rows kept) -> ((m, num_perm) uint32, a and b as
    row numbers of that array)."""
    need = np.unique(np.concatenate([a, b]))
    shard_of = np.searchsorted(offsets, need, side="right") - 1
    parts = [
        summaries[shard]["sig"][need[shard_of == shard] - offsets[shard]]
        for shard in np.unique(shard_of).tolist()
    ]
    sig = np.concatenate(parts) if parts else np.zeros((0, 1), np.uint32)
    return sig, np.searchsorted(need, a), np.searchsorted(need, b)


def estimated_jaccard(sig: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal signature values per pair (a, b: row numbers of sig)."""
    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), PAIR_BLOCK):
        out[s : s + PAIR_BLOCK] = (sig[a[s : s + PAIR_BLOCK]] == sig[b[s : s + PAIR_BLOCK]]).mean(1)
    return out


def semantic_pairs(emb: np.ndarray, threshold: float, params, seed: int = 0):
    """k-means (faiss, spherical) into ~n/cluster_size clusters; each row is compared (cosine, in
    blocks) with the members of its `probe` nearest clusters, so a pair that a cluster boundary
    splits is still found; per row at most max_neighbors pairs at or above the threshold."""
    n = len(emb)
    k = max(1, round(n / params.cluster_size))
    probe = min(params.probe, k)
    if k > 1:
        import faiss

        x = emb.astype(np.float32)
        km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False)
        km.train(x)
        top = km.index.search(x, probe)[1]  # (n, probe) nearest centroids, nearest first
        del x
    else:
        top = np.zeros((n, 1), np.int64)
    labels = top[:, 0]
    out_a, out_b, out_s = [], [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        queries = np.flatnonzero((top == c).any(1))
        xm = emb[members].astype(np.float32)
        for s in range(0, len(queries), SIM_BLOCK):
            q = queries[s : s + SIM_BLOCK]
            sims = emb[q].astype(np.float32) @ xm.T  # (block, members) cosine: rows are unit vectors
            sims[q[:, None] == members[None, :]] = -1.0
            k_top = min(params.max_neighbors, len(members))  # memory: rows x probe x k_top pairs at most
            best = np.argpartition(-sims, k_top - 1, axis=1)[:, :k_top]  # (block, k_top) columns
            vals = np.take_along_axis(sims, best, 1)
            r, j = np.nonzero(vals >= threshold - 1e-6)
            out_a.append(q[r])
            out_b.append(members[best[r, j]])
            out_s.append(vals[r, j])
    a, b = np.concatenate(out_a), np.concatenate(out_b)
    s = np.concatenate(out_s).astype(np.float32)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    code, first = np.unique(lo * n + hi, return_index=True)
    a, b, s = code // n, code % n, s[first]
    order = np.lexsort((-s, a))  # per row, its most similar neighbors first
    a, b, s = a[order], b[order], s[order]
    rank = np.arange(len(a)) - np.searchsorted(a, a, side="left")
    keep = rank < params.max_neighbors
    return a[keep], b[keep], s[keep]


# ---- clusters -------------------------------------------------------------------------------------


def resolve_clusters(n, a, b, sim, lengths, keep: str) -> dict[int, tuple[int, int, float]]:
    """Union-find over verified pairs -> {row: (kept row of its cluster, neighbor, similarity)} for
    every row that is not kept. The neighbor is the kept row when they are a verified pair, else
    the row's most similar verified neighbor (the edge that put it into the cluster)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    edges: dict[tuple[int, int], float] = {}
    best: dict[int, tuple[float, int]] = {}
    for x, y, s in zip(a.tolist(), b.tolist(), sim.tolist(), strict=True):
        ra, rb = find(x), find(y)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        edges[(min(x, y), max(x, y))] = s
        for u, v in ((x, y), (y, x)):
            if u not in best or (s, -v) > (best[u][0], -best[u][1]):
                best[u] = (s, v)
    clusters: dict[int, list[int]] = {}
    for x in parent:
        clusters.setdefault(find(x), []).append(x)
    out = {}
    for members in clusters.values():
        members.sort()
        keeper = members[0] if keep == "first" else max(members, key=lambda i: (lengths[i], -i))
        for i in members:
            if i == keeper:
                continue
            direct = edges.get((min(i, keeper), max(i, keeper)))
            out[i] = (keeper, keeper, direct) if direct is not None else (keeper, best[i][1], best[i][0])
    return out
