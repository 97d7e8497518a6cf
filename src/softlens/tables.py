"""Tidy result tables (results/tables/*.csv): every figure is drawn from one of these."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import hidden_instruction, parse_prompt_key
from .decompose import decline_per_sigma, noise_verdict
from .intervals import bootstrap_relative_interval
from .lora import adapter_config
from .scoring import BY_MESSAGE


def _read(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


TARGET_CLOSURE = ["target_closure_test", "target_ci_low", "target_ci_high"]


def _with_target(df: pd.DataFrame, selected: bool) -> pd.DataFrame:
    """Weights at the selected lambda (one row per atom) or the whole path (one row per lambda)."""
    keys = ["behavior", "target", "dictionary", "exclusion"]
    if selected:
        sel = df[df["selected"]].copy()
        sel["rank"] = sel.groupby(keys)["weight"].rank(ascending=False, method="first")
        return sel[
            keys
            + [
                "atom",
                "weight",
                "is_target",
                "explained_kl_test",
                "ci_low",
                "ci_high",
                "rank",
                "lambda",
                "nnz",
                "kl_test",
                "kl_base_test",
                "explained_kl_train",
                "explained_kl_cv",
                "excluded_atoms",
            ]
            + [c for c in TARGET_CLOSURE if c in sel]
        ].sort_values(keys + ["rank"])
    return df.groupby(keys + ["lambda_index"], as_index=False)[
        [
            "lambda",
            "nnz",
            "explained_kl_train",
            "explained_kl_cv",
            "explained_kl_test",
            "ci_low",
            "ci_high",
            "kl_test",
            "selected",
        ]
    ].first()


def phase0(*, fit_paths, dictionary: str = "hand-written") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(weights at the selected lambda, one row per atom; the whole lambda path, one row per
    lambda)."""
    df = _read(fit_paths)
    df["dictionary"] = dictionary
    return _with_target(df, True), _with_target(df, False)


def phase05(*, fit_paths) -> pd.DataFrame:
    """One row per (behavior, sigma, seed) at the selected lambda, with the behaviour's verdict
    and the decline of explained-KL per unit sigma from the seed's previous sigma."""
    df = _read(fit_paths)
    sel = df[df["selected"]]
    keys = ["behavior", "sigma", "seed"]
    rows = sel.groupby(keys, as_index=False)[
        [
            "kl_noisy_clean",
            "kl_noisy_base",
            "explained_kl_test",
            "ci_low",
            "ci_high",
            "explained_kl_cv",
            "nnz",
            "lambda",
        ]
    ].first()
    target_w = sel[sel["is_target"]].groupby(keys, as_index=False)["weight"].sum()
    rows = rows.merge(target_w.rename(columns={"weight": "target_weight"}), on=keys, how="left")
    verdicts = {b: noise_verdict(g) for b, g in rows.groupby("behavior")}
    rows["verdict"] = rows["behavior"].map(verdicts)
    rows["decline_per_sigma"] = decline_per_sigma(rows)
    return rows.sort_values(keys)


def prompt_closures(frames: pd.DataFrame) -> pd.DataFrame:
    """One row per soft prompt from its per-frame evaluation: a contextualised prompt's score (and
    interval ends) are means over its training frames."""
    trained = frames[frames["trained_frame"]]
    return trained.groupby(["behavior", "variant", "seed"], as_index=False)[
        [
            "kl_closure_test",
            "ci_low",
            "ci_high",
            "kl_test",
            "kl_base_test",
            "ce_test",
            "ce_teacher_test",
            "ce_base_test",
        ]
    ].mean()


def training(*, inputs: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per soft prompt: closure in its training frames; one row per evaluated frame; the
    per-step curves; the greedy samples)."""
    score_paths, curve_paths, sample_paths = (inputs[k] for k in ("scores", "curves", "samples"))
    frames = _read(score_paths)
    keys = ["behavior", "variant", "seed"]
    table = prompt_closures(frames)
    bare = (
        frames[frames["frame"] == "___"]
        .set_index(keys)["kl_closure_test"]
        .rename("kl_closure_test_bare")
    )
    table = table.join(bare, on=keys)
    curves = pd.concat([pd.read_csv(p) for p in curve_paths], ignore_index=True)
    last = curves.groupby(keys, as_index=False).last()[keys + ["step", "loss"]]
    table = table.merge(last.rename(columns={"step": "steps", "loss": "final_loss"}), on=keys)
    return (
        table.sort_values(keys),
        frames.drop(columns=BY_MESSAGE, errors="ignore").sort_values(keys + ["frame"]),
        curves,
        _read(sample_paths),
    )


def phase1(*, fit_paths, dictionary: str = "hand-written") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Phase 0's tables for soft-prompt targets, with their variant, seed and prompt_kind:
    `soft`, a trained prompt, or `control`, its norm-matched random control
    (softlens.sources.norm_matched_random), with the prompt's own closure to the teacher
    (target_closure_test)."""
    full = _read(fit_paths)
    full["dictionary"] = dictionary
    df = full[["behavior", "target"]].drop_duplicates().reset_index(drop=True)
    targets = pd.concat([df, _soft_target(df["target"])], axis=1)
    table = _with_target(full, True).merge(targets, on=["behavior", "target"])
    path = _with_target(full, False).merge(targets, on=["behavior", "target"])
    return table, path


def reading(*, inputs: dict):
    """(one row per soft prompt and reading stage; the searches' per-step records; soft and
    natural vectors' geometry; closure under perturbation; every verbalisation candidate with its
    score)."""
    stage_paths, search_paths, geometry_paths, robustness_paths, verbalise_paths, token_paths = (
        inputs[k] for k in ("stages", "search", "geometry", "robustness", "verbalise", "tokens")
    )
    keys = ["behavior", "variant", "seed"]
    stages = _read(stage_paths)
    stages["ids"] = stages["ids"].map(lambda ids: " ".join(map(str, ids)))
    soft = (
        stages[stages["stage"] == "soft"].set_index(keys)["kl_closure_test"].rename("soft_closure")
    )
    stages = stages.join(soft, on=keys)
    stages["fraction_of_soft"] = stages["kl_closure_test"] / stages["soft_closure"]
    search = pd.concat([pd.read_csv(p) for p in search_paths], ignore_index=True)
    geometry = pd.concat([_read(geometry_paths), _read(token_paths)], ignore_index=True)
    verbal = _read(verbalise_paths)
    return (
        stages.sort_values(keys).drop(columns="soft_closure"),
        search,
        geometry,
        _read(robustness_paths).sort_values(keys),
        verbal.sort_values(keys),
    )


def _soft_target(target: pd.Series) -> pd.DataFrame:
    """prompt_kind (soft, control), variant and seed of each soft-prompt key
    (softlens.config.prompt_key)."""
    parts = [parse_prompt_key(t) for t in target]
    if any(p is None for p in parts):
        raise ValueError(
            f"not a soft-prompt source: {target[[p is None for p in parts]].iloc[0]!r}"
        )
    parts = pd.DataFrame(parts, index=target.index, columns=["kind", "variant", "seed"]).astype(
        {"seed": int}
    )
    return parts.rename(columns={"kind": "prompt_kind"})


def dictionary(
    *, inputs: dict, behaviors: dict, hand_written: list[dict], top: int = 3, embed=None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(one row per soft prompt x dictionary kind x exclusion level at its selected fit; the
    paths, one row per lambda or pursuit step; the selected atoms with their texts).

    Kinds: hand-written (Phase 1's fits), generated (the best screened pool candidates alone) and
    discovered (pursuit over both), each with what its exclusion level removes left out.
    semantic_similarity = mean cosine of the `top` largest-|weight| atoms to the hidden
    instruction; random_similarity = the same dictionary's mean over all its candidates (the
    expectation of drawing atoms at random).
    """
    pursuit_paths, fit_paths, pool_paths = (inputs[k] for k in ("pursuits", "fits", "pools"))
    import numpy as np

    from .exclusion import kept_at
    from .semantic import Embedder, similarity

    embed = embed or Embedder()
    texts = {r["atom"]: r["prompt"] for r in hand_written}
    for (
        name,
        spec,
    ) in behaviors.items():  # an instruction the hand-written list lacked was added as its name
        texts.setdefault(name, spec.get("instruction", ""))

    fits = _read(fit_paths)
    fits = fits.join(_soft_target(fits["target"]))
    fits = fits.rename(columns={"lambda_index": "step"}).assign(dictionary_kind="hand-written")
    fits["text"], fits["kind"] = fits["atom"].map(texts), "hand-written"
    fits["dictionary_size"] = fits.groupby(["behavior", "target", "exclusion", "step"])[
        "atom"
    ].transform("size")
    fits["n_candidates"] = fits["dictionary_size"]

    found = _read(pursuit_paths)
    found = found[
        found["dictionary_kind"] != "combination"
    ]  # a reader's answer (recovery), not a fit
    found = found.join(_soft_target(found["target"]))

    scores = ["explained_kl_cv", "explained_kl_test", "ci_low", "ci_high"]
    cols = [
        "behavior",
        "variant",
        "seed",
        "dictionary_kind",
        "exclusion",
        "step",
        "atom",
        "text",
        "kind",
        "weight",
        "nnz",
        *scores,
        "selected",
        "dictionary_size",
        "n_candidates",
    ]
    allrows = pd.concat([fits[cols], found[cols]], ignore_index=True)
    keys = ["behavior", "variant", "seed", "dictionary_kind", "exclusion"]
    path = allrows.groupby(keys + ["step"], as_index=False)[
        ["nnz", *scores, "selected", "dictionary_size", "n_candidates"]
    ].first()

    pools = {str(p.split("/")[-2]): pd.read_parquet(p) for p in pool_paths}
    sel = allrows[allrows["selected"] & (allrows["weight"] != 0)].copy()
    sel["similarity"] = np.nan
    rows = []
    for key, part in allrows[allrows["selected"]].groupby(keys):
        b, variant, seed, kind, level = key
        hidden = behaviors[b].get("instruction", "")
        nz = part[part["weight"] != 0]
        sims = similarity(embed, list(nz["text"]), hidden)
        sel.loc[nz.index, "similarity"] = sims
        best = np.argsort(-nz["weight"].abs().to_numpy())[:top]
        if kind == "hand-written":
            candidates = list(part["text"])
        else:
            pool = pools[b]
            candidates = list(
                pool.loc[(pool["removed"] == "") & kept_at(pool["excluded_at"], level), "text"]
            )
            if kind == "discovered":
                hand = fits[
                    (fits["behavior"] == b)
                    & (fits["variant"] == variant)
                    & (fits["seed"] == seed)
                    & (fits["exclusion"] == level)
                ]
                candidates += list(hand["text"].drop_duplicates())
        rows.append(
            {
                "behavior": b,
                "variant": variant,
                "seed": seed,
                "dictionary_kind": kind,
                "exclusion": level,
                "n_candidates": int(part["n_candidates"].iloc[0]),
                "dictionary_size": int(part["dictionary_size"].iloc[0]),
                "nnz": int(part["nnz"].iloc[0]),
                **{c: float(part[c].iloc[0]) for c in scores},
                "semantic_similarity": float(sims[best].mean()) if len(best) else np.nan,
                "random_similarity": float(similarity(embed, candidates, hidden).mean()),
                "top_atoms": " | ".join(nz["text"].iloc[best]),
            }
        )
    table = pd.DataFrame(rows).sort_values(keys)
    return (
        table,
        path.sort_values(keys + ["step"]),
        sel[keys + ["atom", "text", "kind", "weight", "similarity"]],
    )


# sae_manifold: per behaviour and layer, prepend against contextualised (seeds that have both)
MANIFOLD_COLUMNS = [
    "behavior",
    "layer",
    "seeds",
    "prepend_recon_error",
    "contextualised_recon_error",
    "baseline_recon_error",
    "instruction_recon_error",
    "prepend_jaccard",
    "contextualised_jaccard",
    "baseline_jaccard",
    "seeds_contextualised_closer",
    "closer_to_manifold",
]


def sae_manifold(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """Per behaviour and layer, over the seeds that trained both variants: the prepend and the
    contextualised prompts' SAE reconstruction error and overlap with the instruction, and which
    sits closer to the natural-language manifold (lower error) in every seed."""
    rows = []
    for (b, layer), d in per_prompt.groupby(["behavior", "layer"]):
        p = d[d["variant"] == "prepend"].set_index("seed")
        c = d[d["variant"] == "contextualised"].set_index("seed")
        both = p.index.intersection(c.index)
        if both.empty:
            continue
        closer = int((c.loc[both, "recon_error"] < p.loc[both, "recon_error"]).sum())
        mean_p, mean_c = p.loc[both, "recon_error"].mean(), c.loc[both, "recon_error"].mean()
        rows.append(
            {
                "behavior": b,
                "layer": layer,
                "seeds": len(both),
                "prepend_recon_error": mean_p,
                "contextualised_recon_error": mean_c,
                "baseline_recon_error": d["baseline_recon_error"].mean(),
                "instruction_recon_error": d["instruction_recon_error"].mean(),
                "prepend_jaccard": p.loc[both, "jaccard_with_instruction"].mean(),
                "contextualised_jaccard": c.loc[both, "jaccard_with_instruction"].mean(),
                "baseline_jaccard": d["baseline_jaccard"].mean(),
                "seeds_contextualised_closer": closer,
                "closer_to_manifold": (
                    "contextualised"
                    if closer == len(both)
                    else "prepend"
                    if closer == 0
                    else "mixed"
                ),
            }
        )
    # a run of one variant has no pair to compare: the table keeps its columns, with no rows
    manifold = pd.DataFrame(rows, columns=MANIFOLD_COLUMNS)
    manifold["middle_layer"] = manifold["layer"] == (
        int(np.median(sorted(per_prompt["layer"].unique()))) if len(manifold) else 0
    )
    return manifold


def sae(
    *, inputs: dict, top_features: int = 12
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(sae: one row per soft prompt x frame x layer; sae_training: one row per layer;
    sae_features: the features soft prompts share with their instruction, most often shared
    first, with their top-activating contexts from the store; sae_manifold: per behaviour and
    layer, prepend against contextualised, and which sits closer to the natural-language
    manifold)."""
    reading_paths, feature_paths, context_paths = (
        inputs[k] for k in ("readings", "features", "contexts")
    )
    from .io import read_metadata

    readings = _read(reading_paths)
    keys = ["behavior", "variant", "seed", "frame", "layer"]
    cols = keys + [
        "recon_error",
        "baseline_recon_error",
        "instruction_recon_error",
        "jaccard_with_instruction",
        "baseline_jaccard",
        "n_active",
        "n_instruction",
        "n_shared",
        "norm",
    ]
    table = readings[cols].sort_values(keys).reset_index(drop=True)
    table["error_ratio"] = table["recon_error"] / table["baseline_recon_error"]

    metas = [read_metadata(p) for p in feature_paths]
    training = pd.DataFrame(
        [
            {
                **m["evaluation"],
                **{k: m[k] for k in ("layer", "architecture", "d_in", "d_sae", "k")},
            }
            for m in metas
        ]
    ).sort_values("layer")

    features = pd.concat([pd.read_parquet(p) for p in feature_paths], ignore_index=True)
    contexts = pd.concat([pd.read_parquet(p) for p in context_paths], ignore_index=True)
    shared = (
        readings[["behavior", "variant", "seed", "frame", "layer", "shared_features"]]
        .explode("shared_features")
        .dropna(subset=["shared_features"])
        .rename(columns={"shared_features": "feature"})
        .astype({"feature": int})
    )
    shared = shared.groupby(["behavior", "variant", "layer", "feature"], as_index=False).agg(
        n_readings=("seed", "size")
    )
    n_readings = (
        readings.groupby(["behavior", "variant", "layer"])
        .size()
        .rename("of_readings")
        .reset_index()
    )
    shared = shared.merge(n_readings, on=["behavior", "variant", "layer"])
    shared = shared.merge(
        features[["layer", "feature", "frequency"]], on=["layer", "feature"], how="left"
    )
    shown = contexts[contexts["rank"] < 3].assign(
        example=lambda d: d["context"].str[-60:] + "[[" + d["token"] + "]]"
    )
    examples = shown.groupby(["layer", "feature"])["example"].agg(" | ".join).reset_index()
    shared = shared.merge(examples, on=["layer", "feature"], how="left")
    shared = (
        shared.sort_values(
            ["behavior", "variant", "layer", "n_readings", "frequency"],
            ascending=[True, True, True, False, True],
        )
        .groupby(["behavior", "variant", "layer"])
        .head(top_features)
        .reset_index(drop=True)
    )

    per_prompt = table.groupby(["behavior", "variant", "seed", "layer"], as_index=False)[
        [
            "recon_error",
            "baseline_recon_error",
            "instruction_recon_error",
            "jaccard_with_instruction",
            "baseline_jaccard",
        ]
    ].mean()
    return table, training, shared, sae_manifold(per_prompt)


CONTROLS = ("none", "random_prompt", "other_instruction")
TEACHER = "teacher"  # the variant of a teacher's own decomposition in the recovery table
CACHED_READERS = ("poe_top_atom", "pursuit_best_single", "pursuit_top_atom", "pursuit_combination")
READERS = (
    "poe_top_atom",
    "pursuit_best_single",
    "pursuit_top_atom",
    "pursuit_combination",
    "repaired",
    "verbalisation",
)


def recovery(
    *, inputs: dict, behaviors: dict, hand_written: list[dict], embed=None
) -> pd.DataFrame:
    """The reader's answer: one hard prompt per (soft prompt, reader, exclusion level), scored as
    a plug-in (held-out KL closure alone in the slot against the behaviour's teacher, with its
    interval, and as a fraction of the soft prompt's own closure in the bare slot) and by MiniLM
    cosine to the hidden instruction with its percentile among the candidates of the same pool
    the level keeps (chance).

    Readers: the top positively weighted atom of the hand-written Phase 1 fit (poe_top_atom);
    pursuit's first atom, the best single one (pursuit_best_single), and its top positive atom at
    the selected step (pursuit_top_atom); the selected step's positive atoms rendered as one
    instruction, top k joined with k chosen on train (pursuit_combination); the repaired
    projection (repaired) and the verbalisation best on train messages (verbalisation), which see
    no dictionary (exclusion none).

    Controls (column `control`; `compared_to` is the instruction the similarity is measured
    against): `none`, the trained prompt against its own hidden instruction (a distilled LoRA's:
    the instruction it was distilled from); `random_prompt`, the same readers on a prompt with
    the trained one's norms and random directions (a control fit among `fit_paths`), against the
    same instruction and teacher; `other_instruction`, the
    trained prompt's answers against each other behaviour's instruction, in the same pool (the
    similarity a reader earns by chance). `prompt_closure_test` is the read prompt's own closure
    against the teacher and `soft_closure_test` the trained prompt's, each on the contexts its
    reader's answer is scored on (`closure_contexts`): `fraction_of_soft` compares like with
    like.

    With `inputs["teachers"]` (Phase 0 fits), each teacher's own decomposition is read too
    (variant `teacher`, seed 0: no soft prompt, no training seed): its top positive atom as a
    plug-in against the teacher, so a user with a steering vector or an adapter gets its reading
    directly; there `soft_closure_test` is the teacher's closure to itself through the caches (1).
    """
    fit_paths = list(inputs["fits"]) + list(inputs.get("controls", []))
    pursuit_paths, stage_paths, verbalise_paths, score_paths, pool_paths = (
        inputs[k] for k in ("pursuits", "stages", "verbalise", "scores", "pools")
    )
    import numpy as np

    from .exclusion import kept_at
    from .semantic import Embedder, similarity

    keys = ["behavior", "variant", "seed"]
    texts = {r["atom"]: r["prompt"] for r in hand_written}
    for name, spec in behaviors.items():
        texts.setdefault(name, spec.get("instruction", ""))
    rows = []

    def answer(key, reader, level, text, closure, low, high, control="none"):
        rows.append(
            dict(
                zip(keys, key),
                control=control,
                reader=reader,
                exclusion=level,
                text=text,
                plugin_closure_test=closure,
                ci_low=low,
                ci_high=high,
            )
        )

    def control_of(kind):
        return "random_prompt" if kind == "control" else "none"

    fits = _read(fit_paths)
    fits = fits.join(_soft_target(fits["target"]))
    if inputs.get("teachers"):  # each teacher's own decomposition (Phase 0), read the same way
        teachers = _read(inputs["teachers"]).assign(prompt_kind="soft", variant=TEACHER, seed=0)
        fits = pd.concat([fits, teachers], ignore_index=True)
    for (*key, kind, level), part in fits[fits["selected"] & (fits["weight"] > 0)].groupby(
        keys + ["prompt_kind", "exclusion"]
    ):
        top = part.loc[part["weight"].idxmax()]
        answer(
            key,
            "poe_top_atom",
            level,
            texts.get(top["atom"], top["atom"]),
            top["plugin_closure_test"],
            top["plugin_ci_low"],
            top["plugin_ci_high"],
            control_of(kind),
        )
    if pursuit_paths:
        found = _read(pursuit_paths)
        found = found.join(_soft_target(found["target"]))
        found = found[found["dictionary_kind"].isin(["discovered", "combination"])]
        for (*key, kind, level), part in found.groupby(keys + ["prompt_kind", "exclusion"]):
            first = part[(part["step"] == 1) & (part["dictionary_kind"] == "discovered")].iloc[0]
            answer(
                key,
                "pursuit_best_single",
                level,
                first["text"],
                first["plugin_closure_test"],
                first["plugin_ci_low"],
                first["plugin_ci_high"],
                control_of(kind),
            )
            combined = part[(part["dictionary_kind"] == "combination") & part["selected"]]
            for _, c in combined.iterrows():
                answer(
                    key,
                    "pursuit_combination",
                    level,
                    c["text"],
                    c["plugin_closure_test"],
                    c["plugin_ci_low"],
                    c["plugin_ci_high"],
                    control_of(kind),
                )
            chosen = part[
                part["selected"] & (part["weight"] > 0) & (part["dictionary_kind"] == "discovered")
            ]
            if len(chosen):
                top = chosen.loc[chosen["weight"].idxmax()]
                answer(
                    key,
                    "pursuit_top_atom",
                    level,
                    top["text"],
                    top["plugin_closure_test"],
                    top["plugin_ci_low"],
                    top["plugin_ci_high"],
                    control_of(kind),
                )
    if stage_paths:
        stages = _read(stage_paths)
        for _, r in stages[stages["stage"] == "repaired"].iterrows():
            answer(
                [r[k] for k in keys],
                "repaired",
                "none",
                r["text"],
                r["kl_closure_test"],
                r["ci_low"],
                r["ci_high"],
            )
        verbal = _read(verbalise_paths)
        for _, r in verbal[verbal["is_best"]].iterrows():
            answer(
                [r[k] for k in keys],
                "verbalisation",
                "none",
                r["candidate"],
                r["kl_closure_test"],
                r["ci_low"],
                r["ci_high"],
            )
    table = pd.DataFrame(rows)
    # Closures compared on the same contexts: the atom readers' plug-in closures come from the
    # caches
    # (the first logprobs.positions of each completion), as does the decomposed prompt's own closure
    # in
    # its Phase 1 fit (target_closure_test); the repaired projection and the verbalisation are
    # scored
    # like the soft prompt's evaluation (the bare slot, training.positions).
    scores = _read(score_paths)
    evaluated = scores[scores["frame"] == "___"].set_index(keys)["kl_closure_test"]
    own = fits.groupby(keys + ["prompt_kind"])["target_closure_test"].first()
    cached = table["reader"].isin(CACHED_READERS)

    def closure(r, kind):
        if r.reader in CACHED_READERS:
            return own.get((r.behavior, r.variant, r.seed, kind), np.nan)
        return evaluated.get((r.behavior, r.variant, r.seed), np.nan) if kind == "soft" else np.nan

    table["soft_closure_test"] = [closure(r, "soft") for r in table.itertuples()]
    table["prompt_closure_test"] = [
        closure(r, "control" if r.control == "random_prompt" else "soft")
        for r in table.itertuples()
    ]
    table["closure_contexts"] = np.where(cached, "cached positions", "evaluation positions")
    table["fraction_of_soft"] = table["plugin_closure_test"] / table["soft_closure_test"]

    # the trained prompts' answers, also against every other behaviour's instruction
    others = [
        table[table["control"] == "none"].assign(control="other_instruction", compared_to=o)
        for o in behaviors
        if behaviors[o].get("instruction")
    ]
    table["compared_to"] = table["behavior"]
    table = pd.concat(
        [table, *[o[o["behavior"] != o["compared_to"]] for o in others]], ignore_index=True
    )

    embed = embed or Embedder()
    pools = {str(p.split("/")[-2]): pd.read_parquet(p) for p in pool_paths}
    table["similarity"], table["similarity_percentile"] = np.nan, np.nan
    for (b, compared, level), part in table.groupby(["behavior", "compared_to", "exclusion"]):
        hidden = hidden_instruction(behaviors, compared)
        if not hidden:
            continue
        if b in pools:
            pool = pools[b]
            chance = list(
                pool.loc[(pool["removed"] == "") & kept_at(pool["excluded_at"], level), "text"]
            )
        else:  # not discovered: the hand-written atoms this level keeps are the pool
            kept = fits.loc[(fits["behavior"] == b) & (fits["exclusion"] == level), "atom"].unique()
            chance = [texts.get(a, a) for a in kept]
        null = similarity(embed, chance, hidden)
        sims = similarity(embed, list(part["text"].fillna("")), hidden)
        table.loc[part.index, "similarity"] = sims
        table.loc[part.index, "similarity_percentile"] = [float((null < x).mean()) for x in sims]
    table["compared_to"] = table["compared_to"].map(
        lambda b: hidden_instruction(behaviors, b) or ""
    )
    table["control"] = pd.Categorical(table["control"], CONTROLS, ordered=True)
    table["reader"] = pd.Categorical(table["reader"], READERS, ordered=True)
    return table.sort_values(keys + ["control", "reader", "exclusion", "compared_to"]).reset_index(
        drop=True
    )


WEIGHTS_COLUMNS = [
    "behavior",
    "teacher_kind",
    "source",
    "rank",
    "variant",
    "seed",
    "teacher_closure_test",
    "teacher_ci_low",
    "teacher_ci_high",
    "kl_closure_test",
    "ci_low",
    "ci_high",
    "top_atom",
    "top_weight",
    "explained_kl_test",
    "explained_ci_low",
    "explained_ci_high",
    "source_atom",
    "source_on_top",
    "relative_closure",
    "relative_ci_low",
    "relative_ci_high",
]


def teacher_kind(spec: dict) -> str | None:
    """lora, distilled_lora, steering or contrastive (a steering teacher whose prompts learn from
    its texts): the teachers made of weights or activations."""
    if spec.get("contrastive"):
        return "contrastive"
    if spec.get("distill"):
        return "distilled_lora"
    if spec.get("lora"):
        return "lora"
    if spec.get("steering"):
        return "steering"
    return None


def lora_rank(spec: dict) -> int | None:
    """A LoRA teacher's rank: the distillation's setting, or a given adapter's own config (`r`)."""
    if spec.get("distill"):
        return spec["distill"].get("rank")
    if spec.get("lora"):
        return adapter_config(spec["lora"]).get("r")
    return None


def relative_closure(
    frames: pd.DataFrame, *, prompt: tuple, reference: tuple, closure: pd.Series
) -> dict:
    """One prompt's closure over a reference prompt's (both keyed behavior, variant, seed), with the
    paired bootstrap interval over the test messages both were scored on (their training frames'
    per-message KLs, as evaluation writes them)."""

    def by_message(key: tuple) -> tuple[np.ndarray, np.ndarray]:
        rows = frames[
            (frames["behavior"] == key[0])
            & (frames["variant"] == key[1])
            & (frames["seed"] == key[2])
            & frames["trained_frame"]
        ]
        if "kl_by_message" not in rows or rows["kl_by_message"].isna().any():
            raise ValueError(
                f"the evaluation of {key[0]}/{key[1]} seed {key[2]} has no per-message KLs "
                "(written before they were kept): rerun its evaluate_softprompt job"
            )
        return np.stack(rows["kl_by_message"]), np.stack(rows["kl_base_by_message"])

    low, high = bootstrap_relative_interval(*by_message(prompt), *by_message(reference))
    return {
        "relative_closure": closure[prompt] / closure[reference],
        "relative_ci_low": low,
        "relative_ci_high": high,
    }


def weights(*, inputs: dict, behaviors: dict, hand_written: list[dict]) -> pd.DataFrame:
    """One row per soft prompt whose teacher is made of weights (a LoRA, given or distilled) or of
    activations (a steering vector): the teacher's own closure to its source where it has one (a
    distilled LoRA against the hard-prompt teacher it was distilled from, on that teacher's test
    messages), the soft prompt's closure to the teacher (mean over its training frames), and its
    Phase 1 decomposition at exclusion `none`: the top atom by weight, with the explained-KL and
    interval, and whether the distilled instruction's own atom (`source_atom`) is on top. A
    contrastive prompt's `relative_closure` is its closure over that of the prompt distilled from
    its source's steering teacher (same variant and seed; both scored on the same teacher's test
    contexts), with a paired bootstrap interval over those messages."""
    if not inputs.get("scores"):
        return pd.DataFrame(columns=WEIGHTS_COLUMNS)
    keys = ["behavior", "variant", "seed"]
    frames = _read(inputs["scores"])
    table = prompt_closures(frames)[keys + ["kl_closure_test", "ci_low", "ci_high"]]
    fits, _ = phase1(fit_paths=inputs["fits"])
    top = fits[
        (fits["exclusion"] == "none") & (fits["prompt_kind"] == "soft") & (fits["rank"] == 1)
    ]
    top = top.rename(
        columns={
            "atom": "top_atom",
            "weight": "top_weight",
            "ci_low": "explained_ci_low",
            "ci_high": "explained_ci_high",
        }
    )[
        keys
        + ["top_atom", "top_weight", "explained_kl_test", "explained_ci_low", "explained_ci_high"]
    ]
    table = table.merge(top, on=keys, how="left")
    curves = {Path(p).parent.name: pd.read_csv(p).iloc[-1] for p in inputs.get("curves", [])}
    atom_of = {r["prompt"].casefold(): r["atom"] for r in hand_written}
    closure = table.set_index(keys)["kl_closure_test"]
    rows = []
    for _, r in table.iterrows():
        spec = behaviors[r["behavior"]]
        source = (spec.get("distill") or spec.get("contrastive") or {}).get("from")
        instruction = behaviors[source]["instruction"] if spec.get("distill") else None
        curve = curves.get(r["behavior"])
        atom = atom_of.get(instruction.casefold(), source) if instruction else None
        rows.append(
            {
                **r.to_dict(),
                "teacher_kind": teacher_kind(spec),
                "source": source,
                "rank": lora_rank(spec),
                "teacher_closure_test": None if curve is None else curve["kl_closure_test"],
                "teacher_ci_low": None if curve is None else curve["ci_low"],
                "teacher_ci_high": None if curve is None else curve["ci_high"],
                "source_atom": atom,
                "source_on_top": None if atom is None else r["top_atom"] == atom,
                **(
                    relative_closure(
                        frames,
                        prompt=(r["behavior"], r["variant"], r["seed"]),
                        reference=(source, r["variant"], r["seed"]),
                        closure=closure,
                    )
                    if spec.get("contrastive") and (source, r["variant"], r["seed"]) in closure
                    else {}
                ),
            }
        )
    return pd.DataFrame(rows, columns=WEIGHTS_COLUMNS).sort_values(keys)
