"""Decomposing a target into a sparse signed product of experts over a dictionary of hard prompts.

Fits run on the train messages' contexts; every lambda of the path is evaluated on the test
messages' contexts. Explained-KL = 1 - KL(P || q_w) / KL(P || base), with base the unprompted model.

Lambda selection (stated in the figure captions): the largest lambda (the sparsest fit) whose held-out
explained-KL is within `selection_tolerance` of the best held-out explained-KL on the path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .head import OutputHead, mean_kl, read_head
from .io import check_aligned, read_aligned, read_states, write_table
from .poe import FactoredProblem, lambda_path, solve_path

log = logging.getLogger(__name__)

TARGET, UNPROMPTED_SOURCE = "target", "unprompted"


@dataclass(frozen=True)
class PathSettings:
    path_length: int = 20
    lambda_ratio: float = 1e-3
    selection_tolerance: float = 0.005
    include_unprompted_atom: bool = False
    tol: float = 1e-9


def dictionary_atoms(spec: dict, dictionary: pd.DataFrame, include_unprompted: bool = False) -> pd.DataFrame:
    """The atoms a behaviour's fits use: columns atom, prompt, source, is_target.

    The behaviour's own instruction is the atom whose cache is the `target` source; if the hand-written
    dictionary lacks it, it is added (Phase 0 must be able to recover it).
    """
    own = (spec.get("instruction") or "").casefold()
    rows = [{"atom": a, "prompt": t, "source": TARGET if t.casefold() == own else f"atom-{a}",
             "is_target": t.casefold() == own} for a, t in zip(dictionary["atom"], dictionary["prompt"])]
    if own and not any(r["is_target"] for r in rows):
        rows.append({"atom": spec["name"], "prompt": spec["instruction"], "source": TARGET, "is_target": True})
    if include_unprompted:
        rows.append({"atom": UNPROMPTED_SOURCE, "prompt": "", "source": UNPROMPTED_SOURCE, "is_target": False})
    return pd.DataFrame(rows)


def fit_path(head: OutputHead, atoms_states: tuple, target: tuple, base: tuple, train: np.ndarray,
             atoms: list[str], settings: PathSettings) -> pd.DataFrame:
    """Fit on train rows along a lambda path; one long row per (lambda, atom) with train/test metrics.

    `atoms_states` is (states (K, R, d), lse (K, R)); `target` and `base` (the unprompted model) are
    (states (R, d), lse (R,)): factored caches (softlens.head), read with the model's output head.
    """
    (X, C), test = atoms_states, ~train

    def problem(rows):
        return FactoredProblem(head, X[:, rows], C[:, rows], target[0][rows], target[1][rows], atoms)

    fitting, held_out = problem(train), problem(test)
    fits = solve_path(fitting, lambda_path(fitting, settings.path_length, settings.lambda_ratio), tol=settings.tol)
    kl_base_train = float(fitting.P.kl_to(torch.from_numpy(base[0][train]), torch.from_numpy(base[1][train])).mean())
    kl_base_test = float(held_out.P.kl_to(torch.from_numpy(base[0][test]), torch.from_numpy(base[1][test])).mean())
    rows = []
    for i, f in enumerate(fits):
        kl_test = held_out.kl(f.weights)
        for atom, wt in zip(atoms, f.weights):
            rows.append({"lambda_index": i, "lambda": f.lam, "atom": atom, "weight": wt, "nnz": f.nnz,
                         "kl_train": f.kl, "kl_test": kl_test, "kl_base_train": kl_base_train,
                         "kl_base_test": kl_base_test, "explained_kl_train": 1 - f.kl / kl_base_train,
                         "explained_kl_test": 1 - kl_test / kl_base_test, "iterations": f.iterations,
                         "rounds": f.rounds, "kkt": f.kkt, "status": f.status})
    df = pd.DataFrame(rows)
    df["selected"] = df["lambda_index"] == select_lambda(df, settings.selection_tolerance)
    return df


def select_lambda(path: pd.DataFrame, tolerance: float) -> int:
    """Index of the largest lambda whose held-out explained-KL is within `tolerance` of the path's best."""
    per = path.groupby("lambda_index")[["lambda", "explained_kl_test"]].first()
    ok = per[per["explained_kl_test"] >= per["explained_kl_test"].max() - tolerance]
    return int(ok["lambda"].idxmax())


def run_fit(cache_dir: str, head_path, atoms: pd.DataFrame, behavior: str, target: str, settings: PathSettings,
            out) -> pd.DataFrame:
    """Decompose the cached source `target` (Phase 0: the behaviour's hard prompt, "target"; Phase 1: a
    soft prompt) over the full dictionary and, when the behaviour's own instruction is an atom, with it
    left out. Both fits come from one read of the caches."""
    paths = [f"{cache_dir}/{s}.parquet" for s in atoms["source"]]
    keys, X, C = read_aligned(paths + [f"{cache_dir}/{target}.parquet", f"{cache_dir}/{UNPROMPTED_SOURCE}.parquet"])
    train, K, head = (keys["split"] == "train").to_numpy(), len(paths), read_head(head_path)
    frames = []
    for loo in (False, True) if atoms["is_target"].any() else (False,):
        use = np.flatnonzero(~atoms["is_target"].to_numpy()) if loo else np.arange(K)
        df = fit_path(head, (X[use], C[use]), (X[K], C[K]), (X[K + 1], C[K + 1]), train,
                      list(atoms["atom"].iloc[use]), settings)
        df["is_target"] = df["atom"].isin(atoms.loc[atoms["is_target"], "atom"])
        df["leave_one_out"] = loo
        df["target"] = target
        frames.append(df)
    df = pd.concat(frames)
    df.insert(0, "behavior", behavior)
    write_table(df, out, metadata={"settings": settings.__dict__, "target": target})
    return df


def run_noise(cache_dir: str, head_path, atoms: pd.DataFrame, behavior: str, noise_sources: dict[str, dict],
              settings: PathSettings, out) -> pd.DataFrame:
    """Phase 0.5: each noisy copy of the target fitted over the full dictionary, plus its distance
    from the clean target and from the unprompted model (test rows)."""
    paths = [f"{cache_dir}/{s}.parquet" for s in atoms["source"]]
    keys, X, C = read_aligned(paths + [f"{cache_dir}/{TARGET}.parquet", f"{cache_dir}/{UNPROMPTED_SOURCE}.parquet"])
    K, train, head = len(paths), (keys["split"] == "train").to_numpy(), read_head(head_path)
    clean, base, dictionary = (X[K], C[K]), (X[K + 1], C[K + 1]), (X[:K], C[:K])
    frames, clean_fit = [], None
    test = ~train
    for name, spec in noise_sources.items():
        if spec["sigma"] == 0:  # no noise: the clean target itself, the same for every seed
            noisy = clean
            if clean_fit is None:
                clean_fit = fit_path(head, dictionary, noisy, base, train, list(atoms["atom"]), settings)
            df = clean_fit.copy()
        else:
            path = f"{cache_dir}/{name}.parquet"
            k, *noisy = read_states(path)
            check_aligned(keys, k, path, paths[0])
            df = fit_path(head, dictionary, noisy, base, train, list(atoms["atom"]), settings)
        df["is_target"] = df["atom"].isin(atoms.loc[atoms["is_target"], "atom"])
        df["target"] = name
        df["sigma"] = spec["sigma"]
        df["seed"] = spec["seed"]
        df["kl_noisy_clean"] = mean_kl(head, [t[test] for t in noisy], [t[test] for t in clean])
        df["kl_noisy_base"] = mean_kl(head, [t[test] for t in noisy], [t[test] for t in base])
        frames.append(df)
    df = pd.concat(frames)
    df.insert(0, "behavior", behavior)
    write_table(df, out, metadata={"settings": settings.__dict__})
    return df


def noise_verdict(curve: pd.DataFrame, min_decline: float = 0.1, share: float = 0.5) -> str:
    """"phase transition" if one step between consecutive sigmas carries more than `share` of the total
    decline of mean held-out explained-KL (and the total decline exceeds `min_decline`); else "smooth".

    `curve` has columns sigma, explained_kl_test (one row per seed; averaged here).
    """
    e = curve.groupby("sigma")["explained_kl_test"].mean().sort_index()
    total = e.iloc[0] - e.iloc[-1]
    steps = -e.diff().dropna()
    if total > min_decline and steps.max() > share * total:
        return "phase transition"
    return "smooth"
