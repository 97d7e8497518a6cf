"""Dictionary discovery: screen a large candidate pool against a target's residual, then pursue.

Screening. With the current fit q_w (here the hand-written dictionary's leave-one-out fit at its
selected lambda), the KL gradient for adding candidate j at weight 0 is

    g_j = mean_n ( E_{q_w}[L_j] - E_P[L_j] ),

which needs only that candidate's log-probs on the contexts: one forward per candidate, no cache
kept. |g_j| is how fast the objective falls as j enters, either sign (weights may be negative).
Shards of the pool are independent jobs; only the best `top` are scored on every context.

Pursuit. From the empty dictionary (q uniform), add the atom with the largest |gradient| among the
hand-written atoms and the screened candidates, refit the active set (lightly L1-penalised), and
stop when held-out explained-KL has not improved by `min_gain` for `patience` additions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import ConfigError
from .decompose import UNPROMPTED_SOURCE, PathSettings, fit_path_split, mean_kl
from .io import check_aligned
from .poe import PoEProblem, solve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScreenSettings:
    messages: int = 8        # train messages the gradient is measured on
    top: int = 16            # best |gradient| candidates that go into full fits

    def __post_init__(self):
        for key in ("messages", "top"):
            if getattr(self, key) < 1:
                raise ConfigError(f"discovery.screen.{key} = {getattr(self, key)}: must be at least 1")


@dataclass(frozen=True)
class PursuitSettings:
    max_atoms: int = 12
    lam: float = 1e-4        # a light L1 keeps each refit well-posed when atoms are near-collinear
    min_gain: float = 0.002  # held-out explained-KL an addition must add to count as progress
    patience: int = 2

    def __post_init__(self):
        if self.max_atoms < 1 or self.patience < 1:
            raise ConfigError("discovery.pursuit: max_atoms and patience must be at least 1")
        if self.lam < 0:
            raise ConfigError(f"discovery.pursuit.lam = {self.lam}: must be >= 0")


def selected_weights(fit: pd.DataFrame, leave_one_out: bool = True) -> pd.Series:
    """The hand-written fit's weights (atom -> weight) at its selected lambda."""
    part = fit[(fit["leave_one_out"] == leave_one_out) & fit["selected"]] if "leave_one_out" in fit else fit[fit["selected"]]
    if part.empty:
        raise ValueError(f"the fit has no selected lambda with leave_one_out={leave_one_out}")
    return part.set_index("atom")["weight"]


def mixture_logprobs(L: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log q_w = log_softmax(sum_i w_i L_i) over (K, R, V) atom log-probs, float64 sums."""
    z = torch.zeros(L.shape[1:], dtype=torch.float64)
    for i in np.flatnonzero(weights):
        z.add_(torch.from_numpy(L[i]).double(), alpha=float(weights[i]))
    return torch.log_softmax(z, -1).float().numpy()


def screening_scores(L_j: np.ndarray, target: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """(gradient g_j = mean_n sum_v (q - P) L_j, and KL(P || p_j) alone) from log-probs (R, V)."""
    lj = torch.from_numpy(L_j).double()
    p, q = torch.from_numpy(target).double().exp(), torch.from_numpy(current).double().exp()
    g = float(((q - p) * lj).sum(-1).mean())
    return g, mean_kl(target, L_j)


def screening_rows(keys: pd.DataFrame, seed: int, messages: int) -> np.ndarray:
    """Rows of the cache (boolean mask) whose train messages the screen measures, chosen by seed."""
    train_ids = np.unique(keys.loc[keys["split"] == "train", "message_id"].to_numpy())
    if len(train_ids) == 0:
        raise ValueError("no train messages in the log-prob caches")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(train_ids)[:messages]
    return keys["message_id"].isin(chosen).to_numpy() & (keys["split"] == "train").to_numpy()


def score_texts(lm, slot, teacher: pd.DataFrame, texts, positions: int, batch_size: int, message_ids=None):
    """Log-probs (R, V) of each text as a hard prompt on the teacher's contexts (all, or `message_ids`),
    with the cache's keys (message_id, split, position) for the rows; yields (text, keys, logprobs)."""
    from .logprobs import score
    from .slot import HardPrompt

    t = teacher if message_ids is None else teacher[teacher["message_id"].isin(message_ids)]
    messages, completions = list(t["user_message"]), [list(c) for c in t["completion_ids"]]
    for text in texts:
        logp, rows = score(lm, slot, HardPrompt(text), messages, completions, positions, batch_size, desc=None)
        keys = pd.DataFrame({"message_id": t["message_id"].to_numpy()[rows[:, 0]],
                             "split": t["split"].to_numpy()[rows[:, 0]], "position": rows[:, 1]})
        yield text, keys, logp


def residual(cache_dir, atoms: pd.DataFrame, target: str, fit_file, rows_seed: int, messages: int):
    """(keys of the screening rows, target log-probs P, current mixture log q_w, the hand-written support)
    on `messages` train messages: q_w is the hand-written leave-one-out fit at its selected lambda."""
    from .io import read_aligned

    w = selected_weights(pd.read_parquet(fit_file))
    use = atoms[atoms["atom"].isin(w[w != 0].index)]
    keys, L = read_aligned([f"{cache_dir}/{s}.parquet" for s in use["source"]] + [f"{cache_dir}/{target}.parquet"])
    rows = screening_rows(keys, rows_seed, messages)
    current = mixture_logprobs(L[:-1][:, rows], w.loc[use["atom"]].to_numpy())
    return keys[rows].reset_index(drop=True), L[-1][rows], current, list(use["atom"])


def run_screen(manifest, teacher_path, pool_path, targets: dict, cache_dir, atoms: pd.DataFrame, shard_index: int,
               shards: int, settings: ScreenSettings, model_settings: dict, positions: int, seed: int,
               out) -> pd.DataFrame:
    """Score one shard of a pool against every target's residual (`targets`: name -> its hand-written
    fit file). A candidate's log-probs do not depend on the target, so each costs one forward for all."""
    from .io import read_teacher, write_table
    from .models import load_model
    from .pool import shard
    from .slot import PromptSlot

    pool = shard(pd.read_parquet(pool_path), shard_index, shards)
    residuals = {name: residual(cache_dir, atoms, name, fit, seed, settings.messages) for name, fit in targets.items()}
    keys = next(iter(residuals.values()))[0]
    for name, (k, *_) in residuals.items():
        check_aligned(keys, k, f"the cache of {name}", "the first target's cache")
    kl_current = {name: mean_kl(P, current) for name, (_, P, current, _) in residuals.items()}

    teacher = read_teacher(teacher_path)
    lm = load_model(manifest, model_settings)
    slot = PromptSlot.for_model(lm, model_settings.get("slot"))
    out_rows = []
    scored = score_texts(lm, slot, teacher, list(pool["text"]), positions, model_settings.get("batch_size", 16),
                         message_ids=keys["message_id"].unique())
    for (_, cand), (_, k, logp) in tqdm(zip(pool.iterrows(), scored), total=len(pool), desc="screen", unit="cand"):
        check_aligned(keys, k, f"candidate {cand['candidate']}", "the target's cache")
        for name, (_, P, current, _) in residuals.items():
            g, kl_alone = screening_scores(logp, P, current)
            out_rows.append({"target": name, "candidate": int(cand["candidate"]), "text": cand["text"],
                             "kind": cand["kind"], "gradient": g, "kl_alone": kl_alone,
                             "kl_current": kl_current[name]})
    table = pd.DataFrame(out_rows, columns=["target", "candidate", "text", "kind", "gradient", "kl_alone",
                                            "kl_current"])
    table["shard"] = shard_index
    write_table(table, out, metadata={"settings": settings.__dict__, "rows": len(keys),
                                      "hand_written_support": {n: r[3] for n, r in residuals.items()}})
    for name, part in table.groupby("target"):
        log.info("%s shard %d/%d: %d candidates; current KL %.4f; best |g| %.4f", name, shard_index, shards,
                 len(part), part["kl_current"].iloc[0], part["gradient"].abs().max())
    return table


def pursue(L_train: np.ndarray, target_train: np.ndarray, base_train: np.ndarray, L_test: np.ndarray,
           target_test: np.ndarray, base_test: np.ndarray, names: list[str], settings: PursuitSettings) -> pd.DataFrame:
    """Greedy pursuit over atoms (K, R, V), rows split into train and test (contiguous arrays are used
    without a copy): one row per (step, active atom) with the held-out score."""
    train_p = PoEProblem(torch.from_numpy(L_train), torch.from_numpy(target_train), names)
    test_p = PoEProblem(torch.from_numpy(L_test), torch.from_numpy(target_test), names)
    kl_base_test = mean_kl(target_test, base_test)
    kl_base_train = mean_kl(target_train, base_train)
    w, active, rows = np.zeros(len(names)), [], []
    best, stall = -np.inf, 0
    for step in tqdm(range(1, min(settings.max_atoms, len(names)) + 1), desc="pursuit", unit="atom"):
        g = train_p.screen(w)
        g[active] = 0.0
        j = int(np.abs(g).argmax())
        active.append(j)
        sub = PoEProblem(train_p.L[active], train_p.target, [names[i] for i in active])
        fit = solve(sub, settings.lam, w[active])
        w = np.zeros(len(names))
        w[active] = fit.weights
        e_test = 1 - test_p.kl(w) / kl_base_test
        for i in active:
            rows.append({"step": step, "added": names[j], "gradient": float(g[j]), "atom": names[i],
                         "weight": float(w[i]), "nnz": int(np.count_nonzero(w)),
                         "explained_kl_train": 1 - fit.kl / kl_base_train, "explained_kl_test": e_test,
                         "converged": fit.converged})
        if e_test > best + settings.min_gain:
            best, stall = e_test, 0
        else:
            stall += 1
            if stall >= settings.patience:
                break
    path = pd.DataFrame(rows)
    per = path.groupby("step")["explained_kl_test"].first()
    path["selected"] = path["step"] == int(per.idxmax())
    return path


def run_pursuit(manifest, teacher_path, screen_paths, cache_dir, atoms: pd.DataFrame, behavior: str, target: str,
                screen: ScreenSettings, pursuit: PursuitSettings, path_settings: PathSettings, model_settings: dict,
                positions: int, out) -> pd.DataFrame:
    """Gather the screen, score its best `top` candidates on every context, then fit two dictionaries:
    `generated` (those candidates alone, along the lambda path) and `discovered` (pursuit over them
    together with the hand-written atoms). The behaviour's instruction is in neither."""
    from .io import read_logprobs, read_teacher, write_table
    from .models import load_model
    from .slot import PromptSlot

    screened = pd.concat([pd.read_parquet(p) for p in screen_paths], ignore_index=True)
    screened = screened[screened["target"] == target]
    if screened.empty:
        raise ValueError(f"the screen of {target} is empty: every pool candidate was removed")
    best = screened.reindex(screened["gradient"].abs().sort_values(ascending=False).index).head(screen.top)

    hand = atoms[~atoms["is_target"]]
    K0 = len(hand)
    teacher = read_teacher(teacher_path)
    lm = load_model(manifest, model_settings)
    slot = PromptSlot.for_model(lm, model_settings.get("slot"))
    # Every atom's rows go straight into train and test arrays, one source at a time: the solver then
    # uses them without a copy, so the job holds the dictionary's log-probs once (~4 GB for 56 atoms).
    keys, P = read_logprobs(f"{cache_dir}/{target}.parquet")
    _, base = read_logprobs(f"{cache_dir}/{UNPROMPTED_SOURCE}.parquet")
    train = (keys["split"] == "train").to_numpy()
    L_train = np.empty((K0 + len(best), int(train.sum()), P.shape[1]), dtype=np.float32)
    L_test = np.empty((K0 + len(best), int((~train).sum()), P.shape[1]), dtype=np.float32)
    for i, source in enumerate(hand["source"]):
        k, logp = read_logprobs(f"{cache_dir}/{source}.parquet")
        check_aligned(keys, k, f"{cache_dir}/{source}.parquet", f"{cache_dir}/{target}.parquet")
        L_train[i], L_test[i] = logp[train], logp[~train]
    for n, (text, k, logp) in enumerate(score_texts(lm, slot, teacher, list(best["text"]), positions,
                                                    model_settings.get("batch_size", 16))):
        check_aligned(keys, k, f"pool candidate {text!r}", f"{cache_dir}/{target}.parquet")
        L_train[K0 + n], L_test[K0 + n] = logp[train], logp[~train]
    P_train, base_train, P_test, base_test = P[train], base[train], P[~train], base[~train]

    pool_names = [f"pool-{c}" for c in best["candidate"]]
    info = pd.concat([
        pd.DataFrame({"atom": hand["atom"], "text": hand["prompt"], "kind": "hand-written"}),
        pd.DataFrame({"atom": pool_names, "text": best["text"].to_numpy(), "kind": best["kind"].to_numpy()}),
    ], ignore_index=True)

    generated = fit_path_split(L_train[K0:], P_train, base_train, L_test[K0:], P_test, base_test, pool_names,
                               path_settings)
    generated = generated.assign(dictionary_kind="generated", step=generated["lambda_index"])
    discovered = pursue(L_train, P_train, base_train, L_test, P_test, base_test, list(info["atom"]), pursuit)
    discovered = discovered.assign(dictionary_kind="discovered")
    cols = ["dictionary_kind", "step", "atom", "weight", "nnz", "explained_kl_train", "explained_kl_test",
            "selected"]
    table = pd.concat([generated[cols + ["lambda"]], discovered[cols + ["added", "gradient"]]], ignore_index=True)
    table = table.merge(info, on="atom", how="left")
    table.insert(0, "target", target)
    table.insert(0, "behavior", behavior)
    generated_rows = table["dictionary_kind"] == "generated"
    table["n_candidates"] = np.where(generated_rows, len(screened), len(screened) + K0)
    table["dictionary_size"] = np.where(generated_rows, len(best), K0 + len(best))
    write_table(table, out, metadata={"screen": screen.__dict__, "pursuit": pursuit.__dict__,
                                      "top": best[["candidate", "text", "kind", "gradient"]].to_dict("records")})
    for kind, part in table[table["selected"]].groupby("dictionary_kind"):
        top = part.reindex(part["weight"].abs().sort_values(ascending=False).index).head(3)
        log.info("%s %s: explained-KL %.3f with %d atoms; top %s", target, kind, part["explained_kl_test"].iloc[0],
                 part["nnz"].iloc[0], list(zip(top["text"], top["weight"].round(2))))
    return table


# --- the pool -------------------------------------------------------------------------------------------------

def run_proposals(model, proposer: dict, model_settings: dict, out) -> pd.DataFrame:
    """Phase 2: a proposer model (by default the run's own) writes candidate instructions, `per_category`
    sampled answers per seed category; each answer is cleaned to its first line. Nothing is executed."""
    from .io import write_table
    from .models import load_model
    from .pool import proposal_requests
    from .slot import PromptSlot
    from .teacher import GenerationSettings, generate
    from .verbalise import clean_candidate

    lm = load_model(model, model_settings)
    slot = PromptSlot.for_model(lm, model_settings.get("slot"))
    requests = proposal_requests(proposer["categories"], proposer["per_category"], proposer["request"])
    gen = GenerationSettings(max_new_tokens=proposer["max_new_tokens"], do_sample=True,
                             temperature=proposer["temperature"], top_p=proposer["top_p"], seed=proposer["seed"],
                             batch_size=model_settings.get("batch_size", 16))
    answers = generate(lm, slot, None, [m for _, m in requests], gen, desc="propose")
    rows = []
    for (category, _), ids in zip(requests, answers):
        answer = lm.tokenizer.decode(ids, skip_special_tokens=True)
        rows.append({"category": category, "answer": answer, "text": clean_candidate(answer)})
    table = pd.DataFrame(rows)
    write_table(table, out, metadata={"proposer": proposer, "model": str(model)})
    log.info("%d proposals, %d distinct", len(table), table["text"].nunique())
    return table


def reading_candidates(stage_paths, verbalise_paths) -> pd.DataFrame:
    """What reading the behaviour's soft prompts produced: repaired projections and pure-HotFlip
    prompts (stages), and every cleaned self-verbalisation."""
    frames = []
    for p in stage_paths:
        t = pd.read_parquet(p)
        t = t[t["stage"].isin(["repaired", "pure_hotflip"])]
        frames.append(pd.DataFrame({"text": t["text"], "kind": "repaired",
                                    "source": t["variant"] + "-seed" + t["seed"].astype(str) + " " + t["stage"]}))
    for p in verbalise_paths:
        t = pd.read_parquet(p)
        t = t[t["candidate"].astype(str).str.len() > 0]
        frames.append(pd.DataFrame({"text": t["candidate"], "kind": "verbalised",
                                    "source": t["variant"] + "-seed" + t["seed"].astype(str)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["text", "kind", "source"])


def run_pool(spec: dict, pool_cfg: dict, proposals_path, stage_paths, verbalise_paths, out) -> pd.DataFrame:
    """One behaviour's pool: its reading's candidates, the proposals and the templated instructions, with
    duplicates and the behaviour's own instruction (and its near-duplicates) marked removed."""
    from .io import write_table
    from .pool import build_pool, templated

    proposals = pd.read_parquet(proposals_path) if proposals_path else pd.DataFrame(columns=["text", "category"])
    parts = [reading_candidates(stage_paths, verbalise_paths),
             pd.DataFrame({"text": proposals["text"], "kind": "generated", "source": proposals["category"]}),
             pd.DataFrame({"text": templated(pool_cfg["templates"], pool_cfg["size"], pool_cfg["seed"]),
                           "kind": "templated", "source": "templates"})]
    hidden = [spec["instruction"]] if spec.get("instruction") else []
    pool = build_pool(pd.concat(parts, ignore_index=True), hidden, pool_cfg["near_duplicate"])
    write_table(pool, out, metadata={"behavior": spec["name"], "hidden": hidden})
    kept = pool[pool["removed"] == ""]
    log.info("%s pool: %d candidates, %d kept (%s); removed: %s", spec["name"], len(pool), len(kept),
             kept["kind"].value_counts().to_dict(), pool.loc[pool["removed"] != "", "removed"].str.split().str[0]
             .value_counts().to_dict())
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
