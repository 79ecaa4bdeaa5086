"""select's greedy, near-linear in rows: per-row tags as CSR arrays and a lazy priority queue.

Every criterion only falls as rows are chosen (diversity: tags get covered; richness: the max cosine
to the chosen rows grows; complexity and completeness are fixed), so a row's last computed score is
an upper bound of its score now (IEEE + and x are monotone, so this holds in floats too). The fill
pops the best bound (ties: first in input order), re-scores that row and takes it when its fresh
(-score, index) still beats every other bound; else it goes back with the fresh score (Minoux's lazy
greedy). The pick is np.argmax of the full score vector, the same row the dense greedy took, since
a row's score is computed with the very same float operations, one row at a time.

Cost: the coverage pass and tag bookkeeping are O(tag occurrences); the fill is O(pops log n), one
pop per pick plus one per re-score (a row is re-scored only when something it depends on changed).
Richness re-scores a popped row against the rows chosen since its last score (float32 dots), and the
final scores of unpicked rows need each row's max cosine to the whole chosen set: O(n x budget x dim),
in BLAS blocks; richness stays quadratic, which is why it is off (or synthesized) at 10M rows.
"""

from __future__ import annotations

import heapq

import numpy as np

CRITERIA = ("diversity", "richness", "complexity", "completeness")
PHASES = ("", "coverage", "score")  # phase codes 0 (unpicked), 1, 2
BLOCK = 1 << 24  # float32 cells per (rows x chosen) similarity block: 64 MiB


class Sampler:
    """Greedy state over n rows: tags as CSR (indptr (n+1,), indices into a vocabulary of V tags),
    each row's uncovered-tag count, its max cosine to the chosen rows (lazily, with richness)."""

    def __init__(self, indptr, indices, vocab_size: int, emb, weights, difficulty, completeness):
        n = len(indptr) - 1
        self.indptr, self.indices, self.emb, self.w = indptr, indices, emb, weights
        self.lens = np.diff(indptr)
        self.covered = np.zeros(vocab_size, dtype=bool)
        self.n_covered = 0
        self.free = np.ones(n, dtype=bool)  # not chosen yet
        self.new = self.lens.astype(np.float64)  # uncovered tags per row
        self.size = np.maximum(self.new, 1)
        rows = np.repeat(np.arange(n, dtype=np.int32), self.lens)  # the row of each tag occurrence
        order = np.argsort(indices, kind="stable")
        self.by_tag_rows = rows[order]  # rows carrying tag t: by_tag_rows[tag_ptr[t]:tag_ptr[t + 1]]
        self.tag_ptr = np.concatenate([[0], np.cumsum(np.bincount(indices, minlength=vocab_size))])
        most = int(self.lens.max()) if n else 0
        cx = self.lens.astype(np.float64) / (most or 1)
        # no rating (unreadable, cut) counts 0: below every readable rating (0.1..1.0), never neutral
        if difficulty is not None:
            cx = (cx + np.array([0.0 if d is None else d for d in difficulty])) / 2
        self.complexity = cx
        self.completeness = (
            None if completeness is None else np.array([0.0 if c is None else c for c in completeness])
        )
        have = {"diversity", "complexity", "richness" if emb is not None else ""}
        have.add("completeness" if completeness is not None else "")
        self.names = [k for k in CRITERIA if k in have and getattr(weights, k) > 0]
        self.weight = sum(getattr(weights, k) for k in self.names)
        self.chosen: list[int] = []
        if emb is not None:  # lazy max cosine: sim[i] is against chosen[:seen[i]]
            self.sim = np.full(n, -1.0)
            self.seen = np.zeros(n, dtype=np.int64)
            self.chosen_emb = np.empty((0, emb.shape[1]), dtype=emb.dtype)
        self.rank = np.full(n, -1, dtype=np.int32)
        self.phase = np.zeros(n, dtype=np.int8)
        self.vals = np.zeros((n, len(self.names) + 1), dtype=np.float64)  # criteria + score

    # -- one row -------------------------------------------------------------------------------------

    def row_values(self, i: int) -> list[float]:
        """Row i's criteria now, then its score: the dense greedy's float operations, on one row."""
        out = []
        for k in self.names:
            if k == "diversity":
                out.append(float(self.new[i] / self.size[i]) if self.lens[i] else 0.0)
            elif k == "richness":
                sim = self.refresh(i)
                out.append(1.0 if sim < -0.5 else min(max(1.0 - sim, 0.0), 1.0))
            elif k == "complexity":
                out.append(float(self.complexity[i]))
            else:
                out.append(float(self.completeness[i]))
        total = 0
        for k, v in zip(self.names, out, strict=True):
            total = total + getattr(self.w, k) * v
        return [*out, total / self.weight]

    def refresh(self, i: int) -> float:
        """Row i's max cosine to every chosen row, updated with the rows chosen since it was last asked."""
        k = len(self.chosen)
        if self.seen[i] < k:
            dots = self.emb[self.chosen[self.seen[i] : k]] @ self.emb[i]
            self.sim[i] = max(self.sim[i], float(dots.max()))
            self.seen[i] = k
        return float(self.sim[i])

    def take(self, i: int, phase: int, values: list[float]) -> None:
        self.rank[i], self.phase[i], self.vals[i] = len(self.chosen), phase, values
        self.free[i] = False
        for t in self.indices[self.indptr[i] : self.indptr[i + 1]].tolist():
            if not self.covered[t]:
                self.covered[t] = True
                self.n_covered += 1
                self.new[self.by_tag_rows[self.tag_ptr[t] : self.tag_ptr[t + 1]]] -= 1
        self.chosen.append(i)

    # -- the two passes ------------------------------------------------------------------------------

    def cover(self, budget: int) -> None:
        """InsTag's pass: rows by tag count, descending (ties: input order); a row is taken when it
        adds a tag not covered yet. Stops early once every tag is covered (no later row can add one)."""
        for i in np.argsort(-self.lens, kind="stable").tolist():
            if len(self.chosen) >= budget or self.n_covered == len(self.covered):
                break
            if self.new[i] > 0:
                self.take(i, 1, self.row_values(i))

    def fill(self, budget: int) -> None:
        """The scored fill, lazily: bounds from the state now (richness bounded by 1), in a static
        sorted order; rows re-scored below their bound move to a heap."""
        if len(self.chosen) >= budget:
            return
        idx = np.flatnonzero(self.free)
        bound = self.bounds(idx)
        order = idx[np.lexsort((idx, -bound))].tolist()  # best bound first, ties by index
        bound_arr = np.full(len(self.free), np.inf)
        bound_arr[idx] = bound
        moved = np.zeros(len(self.free), dtype=bool)  # re-scored: its key is in the heap
        heap: list[tuple[float, int]] = []
        ptr = 0

        def static_key():
            nonlocal ptr
            while ptr < len(order) and (moved[order[ptr]] or not self.free[order[ptr]]):
                ptr += 1
            return (-float(bound_arr[order[ptr]]), order[ptr]) if ptr < len(order) else None

        while len(self.chosen) < budget:
            top = static_key()
            if heap and (top is None or heap[0] < top):
                i = heapq.heappop(heap)[1]
            else:
                i = order[ptr]
                ptr += 1
            values = self.row_values(i)
            key = (-values[-1], i)
            rest = [x for x in (static_key(), heap[0] if heap else None) if x is not None]
            if not rest or key <= min(rest):
                self.take(i, 2, values)
            else:
                moved[i] = True
                heapq.heappush(heap, key)

    def bounds(self, idx: np.ndarray) -> np.ndarray:
        """Scores of rows idx now, with richness at its maximum 1 (an upper bound until re-scored)."""
        crit = self.criteria(idx, richness=np.ones(len(idx)))
        return self.total(crit)

    # -- every row at once ---------------------------------------------------------------------------

    def criteria(self, idx: np.ndarray, richness: np.ndarray | None = None) -> dict[str, np.ndarray]:
        out = {
            "diversity": np.where(self.lens[idx] > 0, self.new[idx] / self.size[idx], 0.0),
            "complexity": self.complexity[idx],
        }
        if "richness" in self.names:
            out["richness"] = richness if richness is not None else self.final_richness(idx)
        if self.completeness is not None:
            out["completeness"] = self.completeness[idx]
        return {k: out[k] for k in self.names}

    def total(self, crit: dict[str, np.ndarray]) -> np.ndarray:
        return sum(getattr(self.w, k) * v for k, v in crit.items()) / self.weight

    def final_richness(self, idx: np.ndarray) -> np.ndarray:
        """1 - max cosine to the whole chosen set (1 when none), in (rows x chosen) blocks."""
        chosen = self.emb[self.chosen]
        sim = np.full(len(idx), -1.0)
        step = max(1, BLOCK // max(len(chosen), 1))
        for a in range(0, len(idx), step):
            if len(chosen):
                block = self.emb[idx[a : a + step]] @ chosen.T
                sim[a : a + step] = np.maximum(-1.0, block.max(axis=1))
        return np.where(sim < -0.5, 1.0, np.clip(1.0 - sim, 0.0, 1.0))

    def finish(self) -> None:
        """Unpicked rows' criteria and score against the final chosen set, into vals."""
        idx = np.flatnonzero(self.free)
        crit = self.criteria(idx)
        crit["score"] = self.total(crit)
        self.vals[idx] = np.stack([v.astype(np.float64) for v in crit.values()], axis=1)
