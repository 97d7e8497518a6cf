"""Tidy result tables (results/tables/*.csv): every figure is drawn from one of these."""

from __future__ import annotations

import pandas as pd

from .decompose import noise_verdict


def _read(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def _with_target(df: pd.DataFrame, selected: bool) -> pd.DataFrame:
    """Weights at the selected lambda (one row per atom) or the whole path (one row per lambda)."""
    keys = ["behavior", "target", "dictionary", "leave_one_out"]
    if selected:
        sel = df[df["selected"]].copy()
        sel["rank"] = sel.groupby(keys)["weight"].rank(ascending=False, method="first")
        return sel[keys + ["atom", "weight", "is_target", "explained_kl_test", "rank", "lambda", "nnz", "kl_test",
                           "kl_base_test", "explained_kl_train"]].sort_values(keys + ["rank"])
    return (df.groupby(keys + ["lambda_index"], as_index=False)
              [["lambda", "nnz", "explained_kl_train", "explained_kl_test", "kl_test", "selected"]].first())


def phase0(fit_paths, dictionary: str = "hand-written") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(weights at the selected lambda, one row per atom; the whole lambda path, one row per lambda)."""
    df = _read(fit_paths)
    df["dictionary"] = dictionary
    return _with_target(df, True), _with_target(df, False)


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


def training(score_paths, curve_paths, sample_paths) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per soft prompt: closure in its training frames; one row per evaluated frame; the
    per-step curves; the greedy samples)."""
    frames = _read(score_paths)
    keys = ["behavior", "variant", "seed"]
    trained = frames[frames["trained_frame"]]
    table = trained.groupby(keys, as_index=False)[["kl_closure_test", "kl_test", "kl_base_test", "ce_test",
                                                   "ce_teacher_test", "ce_base_test"]].mean()
    bare = frames[frames["frame"] == "___"].set_index(keys)["kl_closure_test"].rename("kl_closure_test_bare")
    table = table.join(bare, on=keys)
    curves = pd.concat([pd.read_csv(p) for p in curve_paths], ignore_index=True)
    last = curves.groupby(keys, as_index=False).last()[keys + ["step", "loss"]]
    table = table.merge(last.rename(columns={"step": "steps", "loss": "final_loss"}), on=keys)
    return table.sort_values(keys), frames.sort_values(keys + ["frame"]), curves, _read(sample_paths)


def phase1(fit_paths, dictionary: str = "hand-written") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Phase 0's tables for soft-prompt targets, with their variant and seed."""
    full = _read(fit_paths)
    full["dictionary"] = dictionary
    df = full[["behavior", "target"]].drop_duplicates()
    parts = df["target"].str.extract(r"^soft-(?P<variant>\w+)-seed(?P<seed>\d+)$")
    targets = pd.concat([df, parts.astype({"seed": int})], axis=1)
    table = _with_target(full, True).merge(targets, on=["behavior", "target"])
    path = _with_target(full, False).merge(targets, on=["behavior", "target"])
    return table, path


def reading(stage_paths, search_paths, geometry_paths, robustness_paths, verbalise_paths, token_paths):
    """(one row per soft prompt and reading stage; the searches' per-step records; soft and natural
    vectors' geometry; closure under perturbation; every verbalisation candidate with its score)."""
    keys = ["behavior", "variant", "seed"]
    stages = _read(stage_paths)
    stages["ids"] = stages["ids"].map(lambda ids: " ".join(map(str, ids)))
    soft = stages[stages["stage"] == "soft"].set_index(keys)["kl_closure_test"].rename("soft_closure")
    stages = stages.join(soft, on=keys)
    stages["fraction_of_soft"] = stages["kl_closure_test"] / stages["soft_closure"]
    search = pd.concat([pd.read_csv(p) for p in search_paths], ignore_index=True)
    geometry = pd.concat([_read(geometry_paths), _read(token_paths)], ignore_index=True)
    verbal = _read(verbalise_paths)
    return (stages.sort_values(keys).drop(columns="soft_closure"), search, geometry,
            _read(robustness_paths).sort_values(keys), verbal.sort_values(keys))


def _soft_target(target: pd.Series) -> pd.DataFrame:
    parts = target.str.extract(r"^soft-(?P<variant>\w+)-seed(?P<seed>\d+)$")
    return parts.astype({"seed": int})


def dictionary(pursuit_paths, fit_paths, pool_paths, behaviors: dict, hand_written: list[dict], top: int = 3,
               embed=None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per soft prompt x dictionary kind x leave-one-out at its selected fit; the paths,
    one row per lambda or pursuit step; the selected atoms with their texts).

    Kinds: hand-written (Phase 1's fits, with and without the instruction), generated (the best
    screened pool candidates alone) and discovered (pursuit over both; the instruction is never in
    the pool). semantic_similarity = mean cosine of the `top` largest-|weight| atoms to the hidden
    instruction; random_similarity = the same dictionary's mean over all its candidates (the
    expectation of drawing atoms at random).
    """
    import numpy as np

    from .semantic import Embedder, similarity

    embed = embed or Embedder()
    texts = {r["atom"]: r["prompt"] for r in hand_written}
    for name, spec in behaviors.items():  # an instruction the hand-written list lacked was added as its name
        texts.setdefault(name, spec.get("instruction", ""))

    fits = _read(fit_paths)
    fits = fits.join(_soft_target(fits["target"]))
    fits = fits.rename(columns={"lambda_index": "step"}).assign(dictionary_kind="hand-written")
    fits["text"], fits["kind"] = fits["atom"].map(texts), "hand-written"
    fits["dictionary_size"] = fits.groupby(["behavior", "target", "leave_one_out", "step"])["atom"].transform("size")
    fits["n_candidates"] = fits["dictionary_size"]

    found = _read(pursuit_paths)
    found = found.join(_soft_target(found["target"]))
    found["leave_one_out"] = True

    cols = ["behavior", "variant", "seed", "dictionary_kind", "leave_one_out", "step", "atom", "text", "kind",
            "weight", "nnz", "explained_kl_test", "selected", "dictionary_size", "n_candidates"]
    allrows = pd.concat([fits[cols], found[cols]], ignore_index=True)
    keys = ["behavior", "variant", "seed", "dictionary_kind", "leave_one_out"]
    path = (allrows.groupby(keys + ["step"], as_index=False)
            [["nnz", "explained_kl_test", "selected", "dictionary_size", "n_candidates"]].first())

    pools = {str(p.split("/")[-2]): pd.read_parquet(p) for p in pool_paths}
    sel = allrows[allrows["selected"] & (allrows["weight"] != 0)].copy()
    sel["similarity"] = np.nan
    rows = []
    for key, part in allrows[allrows["selected"]].groupby(keys):
        b, variant, seed, kind, loo = key
        hidden = behaviors[b].get("instruction", "")
        nz = part[part["weight"] != 0]
        sims = similarity(embed, list(nz["text"]), hidden)
        sel.loc[nz.index, "similarity"] = sims
        best = np.argsort(-nz["weight"].abs().to_numpy())[:top]
        if kind == "hand-written":
            candidates = list(part["text"])
        else:
            pool = pools[b]
            candidates = list(pool.loc[pool["removed"] == "", "text"])
            if kind == "discovered":
                candidates += [r["prompt"] for r in hand_written if r["prompt"] != hidden]
        rows.append({"behavior": b, "variant": variant, "seed": seed, "dictionary_kind": kind, "leave_one_out": loo,
                     "n_candidates": int(part["n_candidates"].iloc[0]),
                     "dictionary_size": int(part["dictionary_size"].iloc[0]), "nnz": int(part["nnz"].iloc[0]),
                     "explained_kl_test": float(part["explained_kl_test"].iloc[0]),
                     "semantic_similarity": float(sims[best].mean()) if len(best) else np.nan,
                     "random_similarity": float(similarity(embed, candidates, hidden).mean()),
                     "top_atoms": " | ".join(nz["text"].iloc[best])})
    table = pd.DataFrame(rows).sort_values(keys)
    return table, path.sort_values(keys + ["step"]), sel[keys + ["atom", "text", "kind", "weight", "similarity"]]


def sae(reading_paths, feature_paths, context_paths, top_features: int = 12
        ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(sae: one row per soft prompt x frame x layer; sae_training: one row per layer; sae_features:
    the features soft prompts share with their instruction, most often shared first, with their
    top-activating contexts from the store; sae_manifold: per behaviour and layer, prepend against
    contextualised, and which sits closer to the natural-language manifold)."""
    import numpy as np

    from .io import read_metadata

    readings = _read(reading_paths)
    keys = ["behavior", "variant", "seed", "frame", "layer"]
    cols = keys + ["recon_error", "baseline_recon_error", "instruction_recon_error", "jaccard_with_instruction",
                   "baseline_jaccard", "n_active", "n_instruction", "n_shared", "norm"]
    table = readings[cols].sort_values(keys).reset_index(drop=True)
    table["error_ratio"] = table["recon_error"] / table["baseline_recon_error"]

    metas = [read_metadata(p) for p in feature_paths]
    training = pd.DataFrame([{**m["evaluation"], **{k: m[k] for k in ("layer", "architecture", "d_in", "d_sae", "k")}}
                             for m in metas]).sort_values("layer")

    features = pd.concat([pd.read_parquet(p) for p in feature_paths], ignore_index=True)
    contexts = pd.concat([pd.read_parquet(p) for p in context_paths], ignore_index=True)
    shared = (readings[["behavior", "variant", "seed", "frame", "layer", "shared_features"]]
              .explode("shared_features").dropna(subset=["shared_features"])
              .rename(columns={"shared_features": "feature"}).astype({"feature": int}))
    shared = (shared.groupby(["behavior", "variant", "layer", "feature"], as_index=False)
              .agg(n_readings=("seed", "size")))
    n_readings = readings.groupby(["behavior", "variant", "layer"]).size().rename("of_readings").reset_index()
    shared = shared.merge(n_readings, on=["behavior", "variant", "layer"])
    shared = shared.merge(features[["layer", "feature", "frequency"]], on=["layer", "feature"], how="left")
    shown = contexts[contexts["rank"] < 3].assign(example=lambda d: d["context"].str[-60:] + "[[" + d["token"] + "]]")
    examples = shown.groupby(["layer", "feature"])["example"].agg(" | ".join).reset_index()
    shared = shared.merge(examples, on=["layer", "feature"], how="left")
    shared = (shared.sort_values(["behavior", "variant", "layer", "n_readings", "frequency"],
                                 ascending=[True, True, True, False, True])
              .groupby(["behavior", "variant", "layer"]).head(top_features).reset_index(drop=True))

    per_prompt = table.groupby(["behavior", "variant", "seed", "layer"], as_index=False)[
        ["recon_error", "baseline_recon_error", "instruction_recon_error", "jaccard_with_instruction",
         "baseline_jaccard"]].mean()
    rows = []
    for (b, layer), d in per_prompt.groupby(["behavior", "layer"]):
        p = d[d["variant"] == "prepend"].set_index("seed")
        c = d[d["variant"] == "contextualised"].set_index("seed")
        both = p.index.intersection(c.index)
        if both.empty:
            continue
        closer = int((c.loc[both, "recon_error"] < p.loc[both, "recon_error"]).sum())
        mean_p, mean_c = p.loc[both, "recon_error"].mean(), c.loc[both, "recon_error"].mean()
        rows.append({
            "behavior": b, "layer": layer, "seeds": len(both),
            "prepend_recon_error": mean_p, "contextualised_recon_error": mean_c,
            "baseline_recon_error": d["baseline_recon_error"].mean(),
            "instruction_recon_error": d["instruction_recon_error"].mean(),
            "prepend_jaccard": p.loc[both, "jaccard_with_instruction"].mean(),
            "contextualised_jaccard": c.loc[both, "jaccard_with_instruction"].mean(),
            "baseline_jaccard": d["baseline_jaccard"].mean(),
            "seeds_contextualised_closer": closer,
            "closer_to_manifold": ("contextualised" if closer == len(both) else
                                   "prepend" if closer == 0 else "mixed"),
        })
    manifold = pd.DataFrame(rows)
    if not manifold.empty:
        manifold["middle_layer"] = manifold["layer"] == int(np.median(sorted(table["layer"].unique())))
    return table, training, shared, manifold
