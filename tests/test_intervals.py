"""Folds by message and bootstrap intervals over messages."""

import numpy as np
import pytest

from softlens.intervals import bootstrap_ratio_interval, message_folds, per_message


def test_folds_keep_each_message_whole_and_balance_the_messages():
    ids = np.repeat([f"m{i}" for i in range(10)], 3)
    folds = message_folds(ids, 3, seed=0)
    for m in np.unique(ids):
        assert len(set(folds[ids == m])) == 1
    assert sorted(np.bincount(folds) // 3) == [3, 3, 4]
    assert (folds == message_folds(ids, 3, seed=0)).all() and not (
        folds == message_folds(ids, 3, seed=1)
    ).all()
    with pytest.raises(ValueError, match="3 folds need at least 3 train messages; there are 2"):
        message_folds(["a", "b"], 3)


def test_per_message_sums_rows():
    ids, sums = per_message([1.0, 2.0, 3.0, 4.0], ["b", "a", "b", "a"])
    assert list(ids) == ["a", "b"] and list(sums) == [6.0, 4.0]


def test_bootstrap_interval_holds_the_estimate_narrows_with_messages_and_is_seeded():
    rng = np.random.default_rng(0)
    den = rng.uniform(1, 2, 400)
    num = den * rng.uniform(0.05, 0.15, 400)  # explained ~0.9
    point = 1 - num.sum() / den.sum()
    lo, hi = bootstrap_ratio_interval(num, den)
    assert lo < point < hi and hi - lo < 0.02
    lo16, hi16 = bootstrap_ratio_interval(num[:16], den[:16])
    assert hi16 - lo16 > hi - lo
    assert bootstrap_ratio_interval(num, den, seed=3) == bootstrap_ratio_interval(num, den, seed=3)
    with pytest.raises(ValueError, match="one numerator and one denominator per message"):
        bootstrap_ratio_interval(num, den[:3])
