"""Candidate pools for dictionary discovery (seed 002: 20-100 hand-written prompts may be far too
few).

A pool is a table of candidate instructions with where each came from (`kind`):

- ``templated``: verbs x languages x styles x audiences x formats, sampled without replacement;
- ``generated``: written by a proposer model from seed categories (Phase 2);
- ``verbalised`` / ``repaired``: what reading a soft prompt produced (its self-verbalisations and
  its repaired projection), so a prompt's own reading can explain it.

Duplicates go: exact ones (after case and punctuation folding) and near ones (word-set Jaccard at
or above a threshold); removed rows stay in the table with the reason. The hidden instruction and
what resembles it are not removed here but marked with the exclusion level that removes them
(softlens.exclusion): a discovered dictionary is reported at every level.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd

from .config import ConfigError

TEMPLATE_PARTS = ("languages", "styles", "audiences", "formats")


def normalise(text: str) -> str:
    """Case-folded words, punctuation dropped: what "the same instruction" means for
    deduplication."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def templated(parts: dict, size: int, seed: int) -> list[str]:
    """`size` distinct instructions "<verb> <language> <style> <audience> <format>." sampled
    without replacement from the product (every part but the verb may be left out)."""
    verbs = parts.get("verbs") or []
    if not verbs:
        raise ConfigError(
            "discovery.pool.templates.verbs is empty: every templated instruction needs a verb"
        )
    options = [verbs] + [[""] + list(parts.get(k) or []) for k in TEMPLATE_PARTS]
    combos = [c for c in itertools.product(*options) if any(c[1:])]
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(combos))[:size]
    return [" ".join(w for w in combos[i] if w) + "." for i in sorted(pick)]


def proposal_requests(
    categories: list[str], per_category: int, request: str
) -> list[tuple[str, str]]:
    """(category, user message) for each proposal to sample; `request` has a {category} field."""
    if "{category}" not in request:
        raise ConfigError("discovery.proposer.request must contain {category}")
    return [(c, request.replace("{category}", c)) for c in categories for _ in range(per_category)]


def _word_sets(texts: list[str]):
    from scipy.sparse import csr_matrix

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, t in enumerate(texts):
        for w in set(normalise(t).split()):
            rows.append(i)
            cols.append(vocab.setdefault(w, len(vocab)))
    m = csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(texts), max(len(vocab), 1))
    )
    return m, np.asarray(m.sum(1)).ravel()


def jaccard(a: list[str], b: list[str]) -> np.ndarray:
    """Word-set Jaccard similarity between every text of `a` and every text of `b` (|a| x |b|)."""
    m, sizes = _word_sets(list(a) + list(b))
    ma, mb = m[: len(a)], m[len(a) :]
    inter = (ma @ mb.T).toarray().astype(np.float64)
    union = sizes[: len(a), None] + sizes[None, len(a) :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def build_pool(candidates: pd.DataFrame, near_duplicate: float) -> pd.DataFrame:
    """Number the candidates (columns text, kind, source) and mark duplicates removed, with the
    reason. (What a hidden-instruction experiment may not see is decided per level:
    softlens.exclusion.)

    Order matters: a candidate is a duplicate of the first kept one it matches, so put the kinds
    whose provenance should win first.
    """
    pool = candidates.reset_index(drop=True).copy()
    pool["text"] = pool["text"].astype(str).str.strip()
    pool["removed"] = np.where(pool["text"].map(normalise) == "", "empty", "")
    seen: dict[str, int] = {}
    for i, t in pool.loc[pool["removed"] == "", "text"].items():  # exact duplicates
        key = normalise(t)
        if key in seen:
            pool.at[i, "removed"] = f"duplicate of {seen[key]}"
        else:
            seen[key] = i
    keep = pool.index[pool["removed"] == ""].to_numpy()
    if len(keep) > 1:  # near duplicates: each removed by the first kept candidate it matches
        near = jaccard(list(pool.loc[keep, "text"]), list(pool.loc[keep, "text"])) >= near_duplicate
        alive = np.ones(len(keep), dtype=bool)
        for j in range(len(keep)):
            if not alive[j]:
                continue
            later = near[j] & alive
            later[: j + 1] = False
            for k in np.flatnonzero(later):
                pool.at[keep[k], "removed"] = f"near-duplicate of {keep[j]}"
            alive[later] = False
    pool.insert(0, "candidate", np.arange(len(pool)))
    return pool


def shard(pool: pd.DataFrame, index: int, shards: int) -> pd.DataFrame:
    """The kept candidates of shard `index` of `shards` (round robin, so every shard mixes
    kinds)."""
    if not 0 <= index < shards:
        raise ValueError(f"shard {index} out of range for {shards} shards")
    kept = pool[pool["removed"] == ""]
    return kept.iloc[index::shards]
