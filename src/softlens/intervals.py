"""Uncertainty and selection by message: K-fold splits of the train messages (what every choice
is made on) and bootstrap intervals over the test messages (what every headline score carries).

Scores here are ratios of sums over messages, e.g. explained-KL = 1 - sum KL(P||q) / sum
KL(P||base): resampling messages resamples numerator and denominator together.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def message_folds(message_ids, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..folds-1) of each row, by message: a message's rows share a fold."""
    message_ids = np.asarray(message_ids)
    unique = np.unique(message_ids)
    if not 2 <= folds <= len(unique):
        raise ValueError(
            f"{folds} folds need at least {max(folds, 2)} train messages; there are {len(unique)}"
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = dict(zip(unique[order], np.arange(len(unique)) % folds))
    return np.array([fold_of[m] for m in message_ids], dtype=np.int64)


def per_message(values, message_ids) -> tuple[np.ndarray, np.ndarray]:
    """(message ids, sum of `values` over each message's rows)."""
    ids, inverse = np.unique(np.asarray(message_ids), return_inverse=True)
    return ids, np.bincount(
        inverse, weights=np.asarray(values, dtype=np.float64), minlength=len(ids)
    )


def bootstrap_ratio_interval(
    numerator, denominator, *, resamples: int = 2000, seed: int = 0, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile interval of 1 - sum(numerator) / sum(denominator) over messages resampled with
    replacement (one entry per message)."""
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if len(num) != len(den) or len(num) == 0:
        raise ValueError(
            f"need one numerator and one denominator per message; got {len(num)} and {len(den)}"
        )
    idx = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    scores = 1 - num[idx].sum(1) / den[idx].sum(1)
    lo, hi = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_relative_interval(
    kl,
    kl_base,
    reference_kl,
    reference_base,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile interval of closure / reference closure, two prompts scored on the same messages.

    Each argument is (frames, messages): a prompt's closure is the mean over its frames of
    1 - sum(kl) / sum(kl_base). A resample draws messages once and uses them in both prompts, so
    what the two share (the messages' difficulty) cancels in the ratio instead of widening it.
    """
    arrays = [
        np.atleast_2d(np.asarray(a, dtype=np.float64))
        for a in (kl, kl_base, reference_kl, reference_base)
    ]
    sizes = {a.shape[1] for a in arrays}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"both prompts need scores on the same messages; got sizes {sorted(sizes)}"
        )
    n = sizes.pop()
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))

    def closure(num, den):  # (resamples,): mean over frames of each resample's closure
        return (1 - num[:, idx].sum(-1) / den[:, idx].sum(-1)).mean(0)

    ratios = closure(*arrays[:2]) / closure(*arrays[2:])
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
