"""Dictionary discovery: screen a large candidate pool against a target's residual, then pursue.

Screening. With the current fit q_w (here the hand-written dictionary's leave-one-out fit at its
selected lambda), the KL gradient for adding candidate j at weight 0 is

    g_j = mean_n ( E_{q_w}[L_j] - E_P[L_j] ),

which needs only that candidate's head states on the contexts (softlens.head: E_q[L_j] is one dot
product with E_q[W_v] per context): one forward per candidate, no cache kept. |g_j| is how fast
the objective falls as j enters, either sign (weights may be negative). Shards of the pool are
independent jobs; only the best `top` are scored on every context.

Pursuit. From the empty dictionary (q uniform), add the atom with the largest |gradient| among
the hand-written atoms and the screened candidates, refit the active set (lightly L1-penalised),
and stop when cross-validated explained-KL (folds of the train messages) has not improved by
`min_gain` for `patience` additions; the step with the best cross-validated score is selected.
Test messages are scored at every step, with intervals, and choose nothing.

Every pursuit runs at each exclusion level (softlens.exclusion): the pool's and the hand-written
dictionary's candidates that the level removes are out of its reach.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import ConfigError
from .decompose import (
    TARGET,
    UNPROMPTED_SOURCE,
    PathSettings,
    dense_rows,
    fit_path,
    plugin_closures,
    unprompted_kl,
)
from .exclusion import LEVELS, ExclusionSettings, atom_levels, exclusions, kept_at
from .head import Moments, OutputHead, read_head
from .intervals import bootstrap_ratio_interval, message_folds, per_message
from .io import check_aligned
from .poe import FactoredProblem, PoEProblem, solve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScreenSettings:
    """One screening job: which shard of the pool it scores, on how many train messages."""

    messages: int = 8  # train messages the gradient is measured on
    shards: int = 4  # the pool's shards (one job each)
    shard: int = 0  # this job's shard
    positions: int = 4  # completion positions scored per message (logprobs.positions)
    seed: int = 0  # draws the messages (discovery.pool.seed)

    def __post_init__(self):
        for key in ("messages", "shards", "positions"):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"discovery.screen.{key} = {getattr(self, key)}: must be at least 1"
                )
        if not 0 <= self.shard < self.shards:
            raise ValueError(f"screen shard {self.shard} out of range for {self.shards} shards")


@dataclass(frozen=True)
class PursuitSettings:
    max_atoms: int = 12
    lam: float = 1e-4  # a light L1 keeps each refit well-posed when atoms are near-collinear
    min_gain: float = 0.002  # held-out explained-KL an addition must add to count as progress
    patience: int = 2
    top: int = 16  # best |gradient| screened candidates per exclusion level (discovery.screen.top)
    positions: int = 4  # completion positions scored per message (logprobs.positions)
    levels: tuple = LEVELS  # exclusion levels (exclusion.levels)

    def __post_init__(self):
        if self.max_atoms < 1 or self.patience < 1:
            raise ConfigError("discovery.pursuit: max_atoms and patience must be at least 1")
        if self.top < 1:
            raise ConfigError(f"discovery.screen.top = {self.top}: must be at least 1")
        if self.lam < 0:
            raise ConfigError(f"discovery.pursuit.lam = {self.lam}: must be >= 0")


def selected_weights(fit: pd.DataFrame, exclusion: str | None = None) -> pd.Series:
    """The hand-written fit's weights (atom -> weight) at its selected lambda, at exclusion level
    `exclusion` (default: the strictest level the fit has, so a screen's residual never holds the
    answer)."""
    level = exclusion or max(fit["exclusion"].unique(), key=LEVELS.index)
    part = fit[(fit["exclusion"] == level) & fit["selected"]]
    if part.empty:
        raise ValueError(f"the fit has no selected lambda at exclusion level {level!r}")
    return part.set_index("atom")["weight"]


@dataclass
class Residual:
    """One target on the screening rows: its distribution's moments and the current fit's
    (softlens.head)."""

    keys: pd.DataFrame
    target: Moments
    current: Moments
    kl_current: float
    support: list[str]


def screening_scores(
    states: np.ndarray, lse: np.ndarray, residual: Residual
) -> tuple[float, float]:
    """(gradient g_j = mean_n E_q[L_j] - E_P[L_j], and KL(P || p_j) alone) for candidate j's
    cached rows."""
    x, c = torch.from_numpy(np.asarray(states)), torch.from_numpy(np.asarray(lse))
    g = float((residual.current.cross(x, c) - residual.target.cross(x, c)).mean())
    return g, float(residual.target.kl_to(x, c).mean())


def screening_rows(keys: pd.DataFrame, seed: int, messages: int) -> np.ndarray:
    """Rows of the cache (boolean mask) whose train messages the screen measures, chosen by seed."""
    train_ids = np.unique(keys.loc[keys["split"] == "train", "message_id"].to_numpy())
    if len(train_ids) == 0:
        raise ValueError("no train messages in the log-prob caches")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(train_ids)[:messages]
    return keys["message_id"].isin(chosen).to_numpy() & (keys["split"] == "train").to_numpy()


def score_texts(
    lm, slot, teacher: pd.DataFrame, texts, positions: int, batch_size: int, message_ids=None
):
    """Each text as a hard prompt on the teacher's contexts (all, or `message_ids`), in factored
    form:
    yields (text, keys (message_id, split, position), states, lse)."""
    from .logprobs import SharedPrefix, score
    from .slot import HardPrompt

    head, prefixes = OutputHead.from_model(lm.model), SharedPrefix(lm)
    t = teacher if message_ids is None else teacher[teacher["message_id"].isin(message_ids)]
    messages, completions = list(t["user_message"]), [list(c) for c in t["completion_ids"]]
    for text in texts:
        states, lse, rows = score(
            lm,
            slot,
            HardPrompt(text),
            messages,
            completions,
            positions,
            batch_size,
            desc=None,
            head=head,
            prefixes=prefixes,
        )
        keys = pd.DataFrame(
            {
                "message_id": t["message_id"].to_numpy()[rows[:, 0]],
                "split": t["split"].to_numpy()[rows[:, 0]],
                "position": rows[:, 1],
            }
        )
        yield text, keys, states, lse


def residual(
    caches, head: OutputHead, target: str, fit_file, rows_seed: int, messages: int
) -> Residual:
    """The target and the hand-written leave-one-out fit at its selected lambda (q_w) on
    `messages` train messages (`caches`: softlens.decompose.Caches)."""
    w = selected_weights(pd.read_parquet(fit_file))
    use = caches.atoms[caches.atoms["atom"].isin(w[w != 0].index)]
    keys, X, C = caches.read([*use["source"], target])
    rows = screening_rows(keys, rows_seed, messages)
    weights = np.array(w.loc[use["atom"]], dtype=np.float64)
    u = torch.einsum(
        "k,knd->nd", torch.from_numpy(weights), torch.from_numpy(X[:-1][:, rows]).double()
    ).float()
    s = float(weights.sum())
    lse_q = head.lse(u, s)
    P = head.moments(torch.from_numpy(X[-1][rows]), torch.from_numpy(C[-1][rows]))
    return Residual(
        keys[rows].reset_index(drop=True),
        P,
        head.moments(u, lse_q, s),
        float(P.kl_to(u, lse_q, s).mean()),
        list(use["atom"]),
    )


def run_screen(*, job, caches, pool, fits, settings: ScreenSettings, out) -> pd.DataFrame:
    """Score one shard of the `pool` file against every target's residual (`fits`: each target's
    hand-written fit file, named for its source). A candidate's log-probs do not depend on the
    target, so each costs one forward (on the ModelJob `job`) for all."""
    from pathlib import Path

    from .io import write_table
    from .pool import shard

    head = read_head(caches.head)
    pool = shard(pd.read_parquet(pool), settings.shard, settings.shards)
    residuals = {
        Path(fit).stem: residual(
            caches, head, Path(fit).stem, fit, settings.seed, settings.messages
        )
        for fit in fits
    }
    keys = next(iter(residuals.values())).keys
    for name, r in residuals.items():
        check_aligned(keys, r.keys, f"the cache of {name}", "the first target's cache")

    out_rows = []
    scored = score_texts(
        job.lm,
        job.slot,
        job.teacher,
        list(pool["text"]),
        settings.positions,
        job.batch_size,
        message_ids=keys["message_id"].unique(),
    )
    for (_, cand), (_, k, states, lse) in tqdm(
        zip(pool.iterrows(), scored), total=len(pool), desc="screen", unit="cand"
    ):
        check_aligned(keys, k, f"candidate {cand['candidate']}", "the target's cache")
        for name, r in residuals.items():
            g, kl_alone = screening_scores(states, lse, r)
            out_rows.append(
                {
                    "target": name,
                    "candidate": int(cand["candidate"]),
                    "text": cand["text"],
                    "kind": cand["kind"],
                    "excluded_at": cand["excluded_at"],
                    "gradient": g,
                    "kl_alone": kl_alone,
                    "kl_current": r.kl_current,
                }
            )
    table = pd.DataFrame(
        out_rows,
        columns=[
            "target",
            "candidate",
            "text",
            "kind",
            "excluded_at",
            "gradient",
            "kl_alone",
            "kl_current",
        ],
    )
    table["shard"] = settings.shard
    write_table(
        table,
        out,
        metadata={
            "settings": settings.__dict__,
            "rows": len(keys),
            "hand_written_support": {n: r.support for n, r in residuals.items()},
        },
    )
    for name, part in table.groupby("target"):
        log.info(
            "%s shard %d/%d: %d candidates; current KL %.4f; best |g| %.4f",
            name,
            settings.shard,
            settings.shards,
            len(part),
            part["kl_current"].iloc[0],
            part["gradient"].abs().max(),
        )
    return table


def pursue(
    problem,
    keys: pd.DataFrame,
    base_kl,
    settings: PursuitSettings,
    path: PathSettings,
    dense: PoEProblem | None = None,
) -> pd.DataFrame:
    """Greedy pursuit over the atoms of `problem(rows)` (a FactoredProblem over every candidate
    on those rows; `base_kl(p, rows)` the unprompted model's KL per row): one row per (step,
    active atom), with train, cross-validated and test scores. Stopping and the selected step use
    the cross-validated score."""
    train_rows, test_rows = (
        np.flatnonzero(keys["split"] == "train"),
        np.flatnonzero(keys["split"] == "test"),
    )
    message = keys["message_id"].to_numpy()
    train, test = problem(train_rows), problem(test_rows)
    if (
        dense is None
    ):  # the folds' refits only rank steps: the train rows' restricted problem serves
        dense = train.restricted()
    folds = message_folds(message[train_rows], path.folds, path.seed)
    cv = [
        (folds != f, problem(train_rows[folds == f]), train_rows[folds == f])
        for f in range(path.folds)
    ]
    cv_base = sum(float(base_kl(val, rows).sum()) for _, val, rows in cv)
    kl_base_train = float(base_kl(train, train_rows).mean())
    _, base_test = per_message(base_kl(test, test_rows), message[test_rows])
    names = train.atoms
    # the gradient at w = 0 (step 1's screen), which every active subset's solve slices
    train.lambda_max()
    w, w_folds, active, rows = np.zeros(len(names)), [np.zeros(len(names)) for _ in cv], [], []
    best, stall = -np.inf, 0
    for step in tqdm(
        range(1, min(settings.max_atoms, len(names)) + 1), desc="pursuit", unit="atom"
    ):
        g = train.screen(w)
        g[active] = 0.0
        j = int(np.abs(g).argmax())
        active.append(j)
        fit = solve(train.subset(active), settings.lam, w[active])
        w = np.zeros(len(names))
        w[active] = fit.weights
        cv_kl = 0.0
        for i, (fitting, val, _) in enumerate(cv):  # the same active set refitted without each fold
            f = solve(dense_rows(dense, fitting, active), settings.lam, w_folds[i][active])
            w_folds[i] = np.zeros(len(names))
            w_folds[i][active] = f.weights
            cv_kl += float(val.kl_rows(w_folds[i]).sum())
        e_cv = 1 - cv_kl / cv_base
        _, kl_test = per_message(test.kl_rows(w), message[test_rows])
        ci = bootstrap_ratio_interval(kl_test, base_test, resamples=path.bootstrap, seed=path.seed)
        for i in active:
            rows.append(
                {
                    "step": step,
                    "added": names[j],
                    "gradient": float(g[j]),
                    "atom": names[i],
                    "weight": float(w[i]),
                    "nnz": int(np.count_nonzero(w)),
                    "explained_kl_train": 1 - fit.kl / kl_base_train,
                    "explained_kl_cv": e_cv,
                    "explained_kl_test": 1 - kl_test.sum() / base_test.sum(),
                    "ci_low": ci[0],
                    "ci_high": ci[1],
                    "converged": fit.converged,
                }
            )
        if e_cv > best + settings.min_gain:
            best, stall = e_cv, 0
        else:
            stall += 1
            if stall >= settings.patience:
                break
    table = pd.DataFrame(rows)
    per = table.groupby("step")["explained_kl_cv"].first()
    table["selected"] = table["step"] == int(per.idxmax())
    return table


def run_pursuit(
    *, job, caches, screens, settings: PursuitSettings, path_settings: PathSettings, out
) -> pd.DataFrame:
    """Gather the screen of the decomposed prompt (`caches.decomposed`; `screens`: the shards'
    files); at each exclusion level take the best `top` candidates the level keeps, and fit two
    dictionaries: `generated` (those candidates alone, along the lambda path) and `discovered`
    (pursuit over them together with the hand-written atoms the level keeps), and the discovered
    fit's weighted combination rendered as one instruction (`combination_rows`). Candidates are
    scored (on the ModelJob `job`) on every context once, for all levels."""
    from .io import write_table

    atoms, target, behavior, positions = (
        caches.atoms,
        caches.decomposed,
        job.behavior["name"],
        settings.positions,
    )
    screened = pd.concat([pd.read_parquet(p) for p in screens], ignore_index=True)
    screened = screened[screened["target"] == target]
    if screened.empty:
        raise ValueError(f"the screen of {target} is empty: every pool candidate was removed")
    ranked = screened.reindex(screened["gradient"].abs().sort_values(ascending=False).index)
    best = {
        level: ranked[kept_at(ranked["excluded_at"], level)].head(settings.top)
        for level in settings.levels
    }
    scored = pd.concat(best.values()).drop_duplicates("candidate").reset_index(drop=True)

    head = read_head(caches.head)
    K0 = len(atoms)
    keys, X, C = caches.read(
        [*atoms["source"], target, UNPROMPTED_SOURCE, TARGET]
    )  # the last: the teacher
    P, base, teacher_states = (X[K0], C[K0]), (X[K0 + 1], C[K0 + 1]), (X[K0 + 2], C[K0 + 2])
    reference = caches.path(target)
    Xs, Cs = _score_states(job, list(scored["text"]), keys, positions, reference)
    X, C = np.concatenate([X[:K0], Xs]), np.concatenate([C[:K0], Cs])
    info = pd.concat(
        [
            pd.DataFrame({"atom": atoms["atom"], "text": atoms["prompt"], "kind": "hand-written"}),
            pd.DataFrame(
                {
                    "atom": [f"pool-{c}" for c in scored["candidate"]],
                    "text": scored["text"].to_numpy(),
                    "kind": scored["kind"].to_numpy(),
                }
            ),
        ],
        ignore_index=True,
    )
    hand_excluded = atom_levels(atoms)
    plugin = plugin_closures(
        head, (X, C), teacher_states, base, keys, list(info["atom"]), path_settings
    )

    # one restricted problem over every atom on the train rows, for every level's folds
    train = np.flatnonzero(keys["split"] == "train")
    dense = FactoredProblem(head, X[:, train], C[:, train], P[0][train], P[1][train]).restricted()

    cols = [
        "dictionary_kind",
        "step",
        "atom",
        "weight",
        "nnz",
        "explained_kl_train",
        "explained_kl_cv",
        "explained_kl_test",
        "ci_low",
        "ci_high",
        "selected",
    ]
    # levels often keep the same candidates or the same atoms: each dictionary is fitted once
    shared = dict(
        head=head, states=(X, C), target=P, base=base, keys=keys, names=list(info["atom"])
    )
    frames, generated_for, discovered_for = [], {}, {}
    for level, chosen in best.items():
        pool_idx = K0 + np.flatnonzero(scored["candidate"].isin(chosen["candidate"]))
        use = np.concatenate([np.flatnonzero(kept_at(hand_excluded, level)), pool_idx])
        if tuple(pool_idx) not in generated_for:
            generated_for[tuple(pool_idx)] = _generated_fit(
                **shared, pool_idx=pool_idx, dense=dense, path_settings=path_settings
            )
        if tuple(use) not in discovered_for:
            discovered_for[tuple(use)] = _discovered_fit(
                **shared, use=use, dense=dense, settings=settings, path_settings=path_settings
            )
        generated, discovered = generated_for[tuple(pool_idx)], discovered_for[tuple(use)]
        part = pd.concat(
            [generated[cols + ["lambda"]], discovered[cols + ["added", "gradient"]]],
            ignore_index=True,
        )
        generated_rows = part["dictionary_kind"] == "generated"
        n_pool = int(kept_at(screened["excluded_at"], level).sum())
        part["n_candidates"] = np.where(generated_rows, n_pool, n_pool + len(use) - len(pool_idx))
        part["dictionary_size"] = np.where(generated_rows, len(pool_idx), len(use))
        part["exclusion"] = level
        frames.append(part)
    table = (
        pd.concat(frames, ignore_index=True)
        .merge(info, on="atom", how="left")
        .merge(plugin, on="atom", how="left")
    )
    row_of = {
        t: i for i, t in enumerate(info["text"])
    }  # a combination of one atom is that atom: no new forward

    def combination_states(texts):
        new = [t for t in texts if t not in row_of]
        Xn, Cn = _score_states(job, new, keys, positions, reference) if new else (X[:0], C[:0])
        at = {
            t: (X[row_of[t]], C[row_of[t]]) if t in row_of else (Xn[new.index(t)], Cn[new.index(t)])
            for t in texts
        }
        return np.stack([at[t][0] for t in texts]), np.stack([at[t][1] for t in texts])

    combined = combination_rows(
        table,
        combination_states,
        lambda states, texts, split: plugin_closures(
            head, states, teacher_states, base, keys, texts, path_settings, split
        ),
    )
    table = pd.concat([table, combined], ignore_index=True)
    table.insert(0, "target", target)
    table.insert(0, "behavior", behavior)
    write_table(
        table,
        out,
        metadata={
            "pursuit": settings.__dict__,
            "top": {
                level: b[["candidate", "text", "kind", "gradient"]].to_dict("records")
                for level, b in best.items()
            },
        },
    )
    fitted = table["dictionary_kind"].isin(["generated", "discovered"])
    for (level, kind), part in table[fitted & table["selected"]].groupby(
        ["exclusion", "dictionary_kind"]
    ):
        top = part.reindex(part["weight"].abs().sort_values(ascending=False).index).head(3)
        log.info(
            "%s %s (exclusion %s): explained-KL %.3f [%.3f, %.3f] with %d atoms; top %s",
            target,
            kind,
            level,
            part["explained_kl_test"].iloc[0],
            part["ci_low"].iloc[0],
            part["ci_high"].iloc[0],
            part["nnz"].iloc[0],
            list(zip(top["text"], top["weight"].round(2))),
        )
    return table


def _generated_fit(*, head, states, target, base, keys, names, pool_idx, dense, path_settings):
    """The `generated` dictionary: the pool candidates `pool_idx` alone, along the lambda path.
    `states` (X, C) and `names` cover every atom; `dense` is the train rows' restricted problem
    over all of them."""
    X, C = states
    fit = fit_path(
        head,
        (X[pool_idx], C[pool_idx]),
        target,
        base,
        keys,
        [names[i] for i in pool_idx],
        path_settings,
        dense=dense_rows(dense, slice(None), pool_idx),
    )
    return fit.assign(dictionary_kind="generated", step=fit["lambda_index"])


def _discovered_fit(
    *, head, states, target, base, keys, names, use, dense, settings, path_settings
):
    """The `discovered` dictionary: pursuit over the atoms `use` (the hand-written atoms a level
    keeps and its pool candidates); arguments as for _generated_fit."""
    X, C = states
    kept, Xu, Cu = [names[i] for i in use], X[use], C[use]

    def problem(rows):
        return FactoredProblem(
            head, Xu[:, rows], Cu[:, rows], target[0][rows], target[1][rows], kept
        )

    return pursue(
        problem,
        keys,
        lambda p, rows: unprompted_kl(p, base, rows),
        settings,
        path_settings,
        dense=dense_rows(dense, slice(None), use),
    ).assign(dictionary_kind="discovered")


def combinations(discovered: pd.DataFrame, max_atoms: int = 3) -> list[str]:
    """The selected step's positively weighted atoms, largest weight first, rendered as one
    instruction for each k = 1..max_atoms: the top k texts joined in that order (a product of
    experts with positive weights asks for all of them at once; the rendering drops the weights)."""
    chosen = discovered[discovered["selected"] & (discovered["weight"] > 0)].sort_values(
        "weight", ascending=False
    )
    texts = [str(t).strip() for t in chosen["text"].head(max_atoms)]
    return [" ".join(texts[:k]) for k in range(1, len(texts) + 1)]


def combination_rows(table: pd.DataFrame, score, closures, max_atoms: int = 3) -> pd.DataFrame:
    """The weighted-combination reader at each exclusion level: `combinations` of the discovered
    dictionary, each scored as one hard prompt (`score(texts)` -> (states, lse) stacked), chosen
    by its plug-in closure on the train messages and scored once on test (`closures(states,
    texts, split)`, softlens.decompose.plugin_closures). Rows with dictionary_kind "combination",
    step k, selected."""
    found = table[table["dictionary_kind"] == "discovered"]
    per_level = {level: combinations(part, max_atoms) for level, part in found.groupby("exclusion")}
    texts = list(dict.fromkeys(t for c in per_level.values() for t in c))
    if not texts:
        return pd.DataFrame()
    states = score(texts)
    test = closures(states, texts, "test").set_index("atom")
    train = closures(states, texts, "train").set_index("atom")["plugin_closure_train"]
    rows = []
    for level, candidates in per_level.items():
        best = max(candidates, key=lambda t: train[t])
        rows += [
            {
                "dictionary_kind": "combination",
                "exclusion": level,
                "step": k,
                "atom": f"combination-{k}",
                "text": text,
                "kind": "combination",
                "selected": text == best,
                "plugin_closure_train": train[text],
                **test.loc[text].to_dict(),
            }
            for k, text in enumerate(candidates, start=1)
        ]
    return pd.DataFrame(rows)


def _score_states(job, texts, keys, positions, reference) -> tuple:
    """Texts as hard prompts on every cached context: (states (n, R, d), lse (n, R)) aligned with
    `keys` (those of the cache file `reference`)."""
    X, C = [], []
    for text, k, states, lse in score_texts(
        job.lm, job.slot, job.teacher, texts, positions, job.batch_size
    ):
        check_aligned(keys, k, f"prompt {text!r}", reference)
        X.append(states)
        C.append(lse)
    return np.stack(X), np.stack(C)


# --- the pool
# -------------------------------------------------------------------------------------------------


def run_proposals(*, job, proposer: dict, out) -> pd.DataFrame:
    """Phase 2: a proposer model (the ModelJob `job`: by default the run's own) writes candidate
    instructions, `per_category` sampled answers per seed category; each answer is cleaned to its
    first line. Nothing is executed."""
    from .io import write_table
    from .pool import proposal_requests
    from .teacher import generate
    from .verbalise import clean_candidate

    lm = job.lm
    requests = proposal_requests(
        proposer["categories"], proposer["per_category"], proposer["request"]
    )
    gen = job.generation(
        max_new_tokens=proposer["max_new_tokens"],
        do_sample=True,
        temperature=proposer["temperature"],
        top_p=proposer["top_p"],
        seed=proposer["seed"],
    )
    answers = generate(lm, job.slot, None, [m for _, m in requests], gen, desc="propose")
    rows = []
    for (category, _), ids in zip(requests, answers):
        answer = lm.tokenizer.decode(ids, skip_special_tokens=True)
        rows.append({"category": category, "answer": answer, "text": clean_candidate(answer)})
    table = pd.DataFrame(rows)
    write_table(table, out, metadata={"proposer": proposer, "model": str(job.model)})
    log.info("%d proposals, %d distinct", len(table), table["text"].nunique())
    return table


def reading_candidates(readings) -> pd.DataFrame:
    """What reading the behaviour's soft prompts produced (`readings`: its stage tables and its
    verbalisation tables): repaired projections and pure-HotFlip prompts, and every cleaned
    self-verbalisation."""
    frames = []
    for p in readings:
        t = pd.read_parquet(p)
        if "stage" in t:
            t = t[t["stage"].isin(["repaired", "pure_hotflip"])]
            frames.append(
                pd.DataFrame(
                    {
                        "text": t["text"],
                        "kind": "repaired",
                        "source": t["variant"] + "-seed" + t["seed"].astype(str) + " " + t["stage"],
                    }
                )
            )
            continue
        t = t[t["candidate"].astype(str).str.len() > 0]
        frames.append(
            pd.DataFrame(
                {
                    "text": t["candidate"],
                    "kind": "verbalised",
                    "source": t["variant"] + "-seed" + t["seed"].astype(str),
                }
            )
        )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["text", "kind", "source"])
    )


def run_pool(
    *, spec: dict, pool_cfg: dict, exclusion: ExclusionSettings, proposals, readings, out
) -> pd.DataFrame:
    """One behaviour's pool: its reading's candidates, the proposals and the templated
    instructions, with duplicates marked removed and each candidate's exclusion level
    (softlens.exclusion) against the behaviour's own instruction."""
    from .io import write_table
    from .pool import build_pool, templated
    from .semantic import Embedder

    proposals = (
        pd.read_parquet(proposals) if proposals else pd.DataFrame(columns=["text", "category"])
    )
    parts = [
        reading_candidates(readings),
        pd.DataFrame(
            {"text": proposals["text"], "kind": "generated", "source": proposals["category"]}
        ),
        pd.DataFrame(
            {
                "text": templated(pool_cfg["templates"], pool_cfg["size"], pool_cfg["seed"]),
                "kind": "templated",
                "source": "templates",
            }
        ),
    ]
    hidden = spec.get("instruction")
    pool = build_pool(pd.concat(parts, ignore_index=True), pool_cfg["near_duplicate"])
    embed = Embedder() if hidden and "semantic" in exclusion.levels else None
    ex = exclusions(list(pool["text"]), hidden, spec.get("giveaways", []), exclusion, embed)
    pool = pd.concat([pool, ex], axis=1)
    write_table(
        pool,
        out,
        metadata={"behavior": spec["name"], "hidden": hidden, "exclusion": exclusion.__dict__},
    )
    kept = pool[pool["removed"] == ""]
    log.info(
        "%s pool: %d candidates, %d kept (%s); removed: %s; excluded at: %s",
        spec["name"],
        len(pool),
        len(kept),
        kept["kind"].value_counts().to_dict(),
        pool.loc[pool["removed"] != "", "removed"].str.split().str[0].value_counts().to_dict(),
        kept["excluded_at"].value_counts().to_dict(),
    )
    return pool


def proposer_model(proposer: dict, run_model):
    """The proposer's model: the run's own (its manifest) unless `proposer.model` names a local
    directory or a hub id (cache first, as for the run's model)."""
    from pathlib import Path

    from .config import model_source
    from .models import hub_snapshot

    name = proposer.get("model")
    if not name:
        return run_model
    kind, where = model_source(name)
    return hub_snapshot(where, "main") if kind == "hub" else Path(where)
