"""Folds by message and bootstrap intervals over messages."""

import numpy as np
import pytest

from softlens.intervals import (
    bootstrap_ratio_interval,
    bootstrap_relative_interval,
    message_folds,
    per_message,
)


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


def test_relative_interval_holds_the_ratio_and_pairing_cancels_what_messages_share():
    rng = np.random.default_rng(0)
    base = rng.lognormal(0, 1, 200)  # the unprompted model's KL per message
    ease = rng.uniform(0.2, 1.0, 200)  # shared by both prompts: some messages close far more
    a = base * (1 - 0.4 * ease * rng.uniform(0.9, 1.1, 200))  # half the reference's closure
    b = base * (1 - 0.8 * ease)
    point = (1 - a.sum() / base.sum()) / (1 - b.sum() / base.sum())
    lo, hi = bootstrap_relative_interval(a, base, b, base)
    assert lo < point < hi
    # unpaired: the reference resampled on other messages; what the two share no longer cancels
    lo_u, hi_u = bootstrap_relative_interval(a, base, b[::-1], base[::-1])
    assert hi - lo < (hi_u - lo_u) / 2
    # frames: each prompt's closure is the mean over its frames' closures
    two = bootstrap_relative_interval(np.stack([a, a]), np.stack([base, base]), b, base)
    assert two == pytest.approx((lo, hi))
    with pytest.raises(ValueError, match="same messages; got sizes \\[3, 200\\]"):
        bootstrap_relative_interval(a, base, b[:3], base[:3])
