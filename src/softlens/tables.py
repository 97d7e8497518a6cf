"""Tidy result tables (results/tables/*.csv): every figure is drawn from one of these."""

from __future__ import annotations

import pandas as pd

from .decompose import noise_verdict


def _read(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def phase0(fit_paths, dictionary: str = "hand-written") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(weights at the selected lambda, one row per atom; the whole lambda path, one row per lambda)."""
    df = _read(fit_paths)
    df["dictionary"] = dictionary
    sel = df[df["selected"]].copy()
    sel["rank"] = sel.groupby(["behavior", "leave_one_out"])["weight"].rank(ascending=False, method="first")
    table = sel[["behavior", "dictionary", "atom", "weight", "is_target", "explained_kl_test", "leave_one_out",
                 "rank", "lambda", "nnz", "kl_test", "kl_base_test", "explained_kl_train"]]
    path = (df.groupby(["behavior", "dictionary", "leave_one_out", "lambda_index"], as_index=False)
              [["lambda", "nnz", "explained_kl_train", "explained_kl_test", "kl_test", "selected"]].first())
    return table.sort_values(["behavior", "leave_one_out", "rank"]), path


def phase05(fit_paths) -> pd.DataFrame:
    """One row per (behavior, sigma, seed) at the selected lambda, with the behaviour's verdict."""
    df = _read(fit_paths)
    sel = df[df["selected"]]
    keys = ["behavior", "sigma", "seed"]
    rows = sel.groupby(keys, as_index=False)[["kl_noisy_clean", "kl_noisy_base", "explained_kl_test", "nnz",
                                              "lambda"]].first()
    target_w = sel[sel["is_target"]].groupby(keys, as_index=False)["weight"].sum()
    rows = rows.merge(target_w.rename(columns={"weight": "target_weight"}), on=keys, how="left")
    verdicts = {b: noise_verdict(g) for b, g in rows.groupby("behavior")}
    rows["verdict"] = rows["behavior"].map(verdicts)
    return rows.sort_values(keys)
