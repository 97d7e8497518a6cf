"""Decomposing a target into a sparse signed product of experts over a dictionary of hard
prompts.

Fits run on the train messages' contexts. Lambda is chosen inside train: K-fold cross-validation
by message, the largest lambda (the sparsest fit) whose cross-validated explained-KL is within
`selection_tolerance` of the path's best. The test messages are scored once at every lambda, with
a bootstrap interval over test messages; nothing is chosen on them. Explained-KL = 1 - KL(P ||
q_w) / KL(P || base), with base the unprompted model, both summed over the same contexts.

A hidden-instruction fit runs at every exclusion level (softlens.exclusion): the atoms that level
removes are left out of its dictionary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import TARGET, UNPROMPTED_SOURCE, dictionary_atoms  # noqa: F401 (the fits' atoms)
from .exclusion import LEVELS, atom_levels, kept_at
from .head import OutputHead, cached_mean_kl, read_head
from .intervals import bootstrap_ratio_interval, message_folds, per_message
from .io import check_aligned, read_aligned, read_states, write_table
from .poe import FactoredProblem, PoEProblem, lambda_path, solve_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PathSettings:
    path_length: int = 20
    lambda_ratio: float = 1e-3
    selection_tolerance: float = 0.005
    include_unprompted_atom: bool = False
    tol: float = 1e-9
    folds: int = 3  # cross-validation folds over the train messages (lambda selection)
    cv_tol: float = (
        1e-4  # the folds' KKT tolerance, relative to lambda_max (they only rank lambdas)
    )
    bootstrap: int = 2000  # resamples of the test messages for each interval
    seed: int = 0  # folds and resamples


def fit_path(
    head: OutputHead,
    atoms_states: tuple,
    target: tuple,
    base: tuple,
    keys: pd.DataFrame,
    atoms: list[str],
    settings: PathSettings,
    dense: PoEProblem | None = None,
) -> pd.DataFrame:
    """Fit on train rows along a lambda path; one long row per (lambda, atom) with train,
    cross-validated and test metrics (`explained_kl_test` with its interval `ci_low`, `ci_high`);
    `selected` by CV.

    `atoms_states` is (states (K, R, d), lse (K, R)); `target` and `base` (the unprompted model)
    are (states (R, d), lse (R,)): factored caches (softlens.head), read with the model's output
    head. `keys` (R rows: message_id, split) says which rows are train and which message each
    belongs to. `dense`: the train rows' restricted problem over these atoms
    (FactoredProblem.restricted), if already built.
    """
    X, C = atoms_states
    train, test = np.flatnonzero(keys["split"] == "train"), np.flatnonzero(keys["split"] == "test")
    message = keys["message_id"].to_numpy()

    def problem(rows):
        return FactoredProblem(
            head, X[:, rows], C[:, rows], target[0][rows], target[1][rows], atoms
        )

    def base_kl(p: FactoredProblem, rows) -> np.ndarray:
        return unprompted_kl(p, base, rows)

    fitting = problem(train)
    lambdas = lambda_path(fitting, settings.path_length, settings.lambda_ratio)
    fits = solve_path(fitting, lambdas, tol=settings.tol)
    kl_base_train = float(base_kl(fitting, train).mean())
    dense = dense if dense is not None else fitting.restricted()
    cv_kl, cv_base = cross_validated_kl(dense, problem, base_kl, lambdas, train, message, settings)

    held_out = problem(test)
    _, base_test = per_message(base_kl(held_out, test), message[test])
    rows = []
    for i, f in enumerate(fits):
        _, kl_test = per_message(held_out.kl_rows(f.weights), message[test])
        ci = bootstrap_ratio_interval(
            kl_test, base_test, resamples=settings.bootstrap, seed=settings.seed
        )
        scores = {
            "lambda_index": i,
            "lambda": f.lam,
            "nnz": f.nnz,
            "kl_train": f.kl,
            "kl_test": kl_test.sum() / len(test),
            "kl_base_train": kl_base_train,
            "kl_base_test": base_test.sum() / len(test),
            "explained_kl_train": 1 - f.kl / kl_base_train,
            "explained_kl_cv": 1 - cv_kl[i] / cv_base,
            "explained_kl_test": 1 - kl_test.sum() / base_test.sum(),
            "ci_low": ci[0],
            "ci_high": ci[1],
            "iterations": f.iterations,
            "rounds": f.rounds,
            "kkt": f.kkt,
            "status": f.status,
        }
        rows += [{**scores, "atom": atom, "weight": wt} for atom, wt in zip(atoms, f.weights)]
    df = pd.DataFrame(rows)
    df["selected"] = df["lambda_index"] == select_lambda(df, settings.selection_tolerance)
    return df


def unprompted_kl(p: FactoredProblem, base: tuple, rows) -> np.ndarray:
    """KL(P_n || unprompted_n) per context of problem `p` (its rows are `rows` of the caches
    `base`)."""
    return p.P.kl_to(torch.from_numpy(base[0][rows]), torch.from_numpy(base[1][rows])).numpy()


def dense_rows(dense: PoEProblem, rows, atoms=None) -> PoEProblem:
    """A restricted problem's rows (and atoms), as a problem of its own."""
    L = dense.L[:, rows] if atoms is None else dense.L[np.asarray(atoms)][:, rows]
    names = dense.atoms if atoms is None else [dense.atoms[i] for i in atoms]
    return PoEProblem(L, dense.target[rows], names)


def cross_validated_kl(
    dense: PoEProblem,
    problem,
    base_kl,
    lambdas,
    train: np.ndarray,
    message: np.ndarray,
    settings: PathSettings,
) -> tuple[np.ndarray, float]:
    """(summed validation KL per lambda, summed validation KL of the unprompted model) over K
    folds of the train messages. Each fold's path is fitted on the other folds' rows of `dense`
    (the train rows' restricted problem, in `train`'s order: it only has to rank lambdas),
    warm-started along the same lambdas; the held-out fold is scored exactly (`problem(rows)`,
    `base_kl(problem, rows)`)."""
    folds = message_folds(message[train], settings.folds, settings.seed)
    kl, total_base = np.zeros(len(lambdas)), 0.0
    for f in range(settings.folds):
        path = solve_path(
            dense_rows(dense, folds != f),
            lambdas,
            tol=max(settings.tol, settings.cv_tol * float(lambdas[0])),
        )
        rows = train[folds == f]
        validation = problem(rows)
        kl += [validation.kl_rows(p.weights).sum() for p in path]
        total_base += float(base_kl(validation, rows).sum())
    return kl, total_base


def plugin_closures(
    head: OutputHead,
    atoms_states: tuple,
    teacher: tuple,
    base: tuple,
    keys: pd.DataFrame,
    atoms: list[str],
    settings: PathSettings,
    split: str = "test",
) -> pd.DataFrame:
    """Each atom alone in the slot, as a reader's answer: its held-out KL closure against the
    behaviour's teacher, 1 - sum KL(teacher || atom) / sum KL(teacher || unprompted) over the
    test messages, with its 95% bootstrap interval (columns atom, plugin_closure_test,
    plugin_ci_low, plugin_ci_high). `split="train"` scores the train messages instead (column
    plugin_closure_train), to choose on."""
    X, C = atoms_states
    test = np.flatnonzero(keys["split"] == split)
    message = keys["message_id"].to_numpy()[test]
    T = head.moments(
        torch.from_numpy(np.asarray(teacher[0])[test]),
        torch.from_numpy(np.asarray(teacher[1])[test]),
    )

    def summed_kl(x, c) -> np.ndarray:
        kl = T.kl_to(torch.from_numpy(np.asarray(x)[test]), torch.from_numpy(np.asarray(c)[test]))
        return per_message(kl.numpy(), message)[1]

    base_kl = summed_kl(*base)
    rows = []
    for i, atom in enumerate(atoms):
        kl = summed_kl(X[i], C[i])
        low, high = bootstrap_ratio_interval(
            kl, base_kl, resamples=settings.bootstrap, seed=settings.seed
        )
        rows.append(
            {
                "atom": atom,
                f"plugin_closure_{split}": 1 - kl.sum() / base_kl.sum(),
                "plugin_ci_low": low,
                "plugin_ci_high": high,
            }
        )
    return pd.DataFrame(rows)


def select_lambda(path: pd.DataFrame, tolerance: float) -> int:
    """Index of the largest lambda whose cross-validated explained-KL is within `tolerance` of
    the path's best (chosen inside train; the test columns play no part)."""
    per = path.groupby("lambda_index")[["lambda", "explained_kl_cv"]].first()
    ok = per[per["explained_kl_cv"] >= per["explained_kl_cv"].max() - tolerance]
    return int(ok["lambda"].idxmax())


def exclusion_sets(atoms: pd.DataFrame, levels) -> dict[str, np.ndarray]:
    """Atom indices each exclusion level keeps (`atoms.excluded_at`, softlens.exclusion; absent =
    none)."""
    excluded = atom_levels(atoms)
    return {level: np.flatnonzero(kept_at(excluded, level)) for level in levels}


@dataclass(frozen=True, eq=False)
class Caches:
    """The log-prob caches one job reads, exactly as its rule declares them (each file is named
    for its source: `{source}.parquet`), the output head they are read with, the dictionary's
    atoms (each naming its source) and the source being decomposed (Phase 0: the teacher's hard
    prompt, "target"; Phase 1: a soft prompt's key)."""

    head: str
    files: tuple
    atoms: pd.DataFrame
    decomposed: str = TARGET

    def path(self, source: str) -> str:
        for f in self.files:
            if Path(f).stem == source:
                return str(f)
        raise ValueError(
            f"the cache of source {source!r} is not among this job's declared inputs "
            f"({len(self.files)} cache files)"
        )

    def read(self, sources) -> tuple:
        """(keys, states, lse) of `sources`, aligned (softlens.io.read_aligned)."""
        return read_aligned([self.path(s) for s in sources])


def run_fit(
    *, caches: Caches, behavior: str, settings: PathSettings, levels=LEVELS, out
) -> pd.DataFrame:
    """Decompose the cached source `target` (Phase 0: the behaviour's hard prompt, "target";
    Phase 1: a soft prompt) over the dictionary at each exclusion level (`atoms.excluded_at`;
    levels that keep the same atoms share one fit), with each atom's plug-in closure against the
    behaviour's teacher. All fits come from one read of the caches."""
    atoms, target = caches.atoms, caches.decomposed
    keys, X, C = caches.read(
        [*atoms["source"], target, UNPROMPTED_SOURCE, TARGET]
    )  # the last: the teacher
    K, head = len(atoms), read_head(caches.head)
    plugin = plugin_closures(
        head,
        (X[: K + 1], C[: K + 1]),
        (X[K + 2], C[K + 2]),
        (X[K + 1], C[K + 1]),
        keys,
        list(atoms["atom"]) + [target],
        settings,
    )
    own, plugin = (
        plugin.iloc[K],
        plugin.iloc[:K],
    )  # the decomposed target's own closure to the teacher
    train = np.flatnonzero(keys["split"] == "train")
    dense = FactoredProblem(
        head, X[:K][:, train], C[:K][:, train], X[K][train], C[K][train]
    ).restricted()
    fitted: dict[bytes, pd.DataFrame] = {}
    frames = []
    for level, use in exclusion_sets(atoms, levels).items():
        if use.tobytes() not in fitted:
            fitted[use.tobytes()] = fit_path(
                head,
                (X[use], C[use]),
                (X[K], C[K]),
                (X[K + 1], C[K + 1]),
                keys,
                list(atoms["atom"].iloc[use]),
                settings,
                dense=dense_rows(dense, slice(None), use),
            )
        df = fitted[use.tobytes()].merge(plugin, on="atom", how="left")
        df["is_target"] = df["atom"].isin(atoms.loc[atoms["is_target"], "atom"])
        df["exclusion"] = level
        df["excluded_atoms"] = ", ".join(atoms["atom"].drop(atoms.index[use]))
        df["target"] = target
        df["target_closure_test"] = own["plugin_closure_test"]
        df["target_ci_low"], df["target_ci_high"] = own["plugin_ci_low"], own["plugin_ci_high"]
        frames.append(df)
    df = pd.concat(frames)
    df.insert(0, "behavior", behavior)
    write_table(df, out, metadata={"settings": settings.__dict__, "target": target})
    return df


def run_noise(
    *, caches: Caches, behavior: str, noise_sources: dict[str, dict], settings: PathSettings, out
) -> pd.DataFrame:
    """Phase 0.5: each noisy copy of the target fitted over the full dictionary, plus its
    distance from the clean target and from the unprompted model (test rows)."""
    atoms = caches.atoms
    keys, X, C = caches.read([*atoms["source"], TARGET, UNPROMPTED_SOURCE])
    K, test, head = len(atoms), (keys["split"] == "test").to_numpy(), read_head(caches.head)
    clean, base, dictionary = (X[K], C[K]), (X[K + 1], C[K + 1]), (X[:K], C[:K])
    frames, clean_fit = [], None
    for name, spec in noise_sources.items():
        if spec["sigma"] == 0:  # no noise: the clean target itself, the same for every seed
            noisy = clean
            if clean_fit is None:
                clean_fit = fit_path(
                    head, dictionary, noisy, base, keys, list(atoms["atom"]), settings
                )
            df = clean_fit.copy()
        else:
            path = caches.path(name)
            k, *noisy = read_states(path)
            check_aligned(keys, k, path, caches.path(atoms["source"].iloc[0]))
            df = fit_path(head, dictionary, noisy, base, keys, list(atoms["atom"]), settings)
        df["is_target"] = df["atom"].isin(atoms.loc[atoms["is_target"], "atom"])
        df["target"] = name
        df["sigma"] = spec["sigma"]
        df["seed"] = spec["seed"]
        df["kl_noisy_clean"] = cached_mean_kl(
            head, [t[test] for t in noisy], [t[test] for t in clean]
        )
        df["kl_noisy_base"] = cached_mean_kl(
            head, [t[test] for t in noisy], [t[test] for t in base]
        )
        frames.append(df)
    df = pd.concat(frames)
    df.insert(0, "behavior", behavior)
    write_table(df, out, metadata={"settings": settings.__dict__})
    return df


def decline_per_sigma(curve: pd.DataFrame) -> pd.Series:
    """Fall of held-out explained-KL per unit sigma from the previous sigma, per behaviour and
    noise seed (NaN at each seed's smallest sigma). `curve` has behavior, seed, sigma and
    explained_kl_test."""
    c = curve.sort_values(["behavior", "seed", "sigma"])
    g = c.groupby(["behavior", "seed"])
    return (-g["explained_kl_test"].diff() / g["sigma"].diff()).reindex(curve.index)


def noise_verdict(curve: pd.DataFrame, min_decline: float = 0.1, share: float = 0.5) -> str:
    """ "phase transition" if one step between consecutive sigmas carries more than `share` of the
    total decline of mean held-out explained-KL (and the total decline exceeds `min_decline`);
    else "smooth".

    `curve` has columns sigma, explained_kl_test (one row per seed; averaged here).
    """
    e = curve.groupby("sigma")["explained_kl_test"].mean().sort_index()
    total = e.iloc[0] - e.iloc[-1]
    steps = -e.diff().dropna()
    if total > min_decline and steps.max() > share * total:
        return "phase transition"
    return "smooth"
