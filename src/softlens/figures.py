"""Figures, each drawn from one tidy table and nothing else."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .io import atomic_path  # noqa: E402


def _save(fig, out) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def _weight_bars(ax, d: pd.DataFrame, title: str, fontsize: int) -> None:
    """One fit's signed weights as horizontal bars: red = the true instruction, blue > 0, grey <
    0."""
    if d.empty:  # no leave-one-out fit where the behaviour has no instruction (a steering vector)
        ax.set_axis_off()
        return
    d = d.sort_values("weight")
    colors = [
        "tab:red" if tt else ("tab:blue" if w > 0 else "tab:gray")
        for tt, w in zip(d["is_target"], d["weight"])
    ]
    ax.barh(d["label"], d["weight"], color=colors)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_title(title, fontsize=fontsize)
    ax.tick_params(labelsize=fontsize - 1)


def _levels(table: pd.DataFrame) -> list[str]:
    """The exclusion levels present, weakest first."""
    from .exclusion import LEVELS

    return [x for x in LEVELS if x in set(table["exclusion"])]


def _score(d: pd.DataFrame) -> str:
    """Held-out explained-KL with its 95% interval, from a selected fit's rows."""
    if d.empty:
        return ""
    r = d.iloc[0]
    return f"{r['explained_kl_test']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def phase0(table: pd.DataFrame, out, top: int = 6) -> None:
    """Recovered weights per behaviour at the selected lambda, at each exclusion level (none =
    the full dictionary; the stricter levels leave out the instruction and what resembles it)."""
    t = table[table["weight"] != 0].copy()
    t = t[
        t.groupby(["behavior", "exclusion"])["weight"].transform(
            lambda w: w.abs().rank(ascending=False)
        )
        <= top
    ]
    t["label"] = t["atom"] + t["is_target"].map({True: " (true)", False: ""})
    behaviors, levels = sorted(t["behavior"].unique()), _levels(table)
    fig, axes = plt.subplots(
        len(behaviors),
        len(levels),
        figsize=(4.4 * len(levels), 2.2 * len(behaviors) + 0.5),
        squeeze=False,
    )
    for i, b in enumerate(behaviors):
        for j, level in enumerate(levels):
            score = _score(table[(table["behavior"] == b) & (table["exclusion"] == level)])
            _weight_bars(
                axes[i, j],
                t[(t["behavior"] == b) & (t["exclusion"] == level)],
                f"{b}, exclusion {level}\nexplained-KL {score}",
                fontsize=8,
            )
    fig.suptitle(
        "Phase 0: PoE weights recovered for each known hard prompt (red = the true instruction; "
        "held-out explained-KL with 95% bootstrap interval)"
    )
    fig.tight_layout()
    _save(fig, out)


def phase05(table: pd.DataFrame, out) -> None:
    """KL(noisy||clean), KL(noisy||base), explained-KL, the weight on the true instruction and
    the decline of explained-KL per unit sigma against sigma, spread over noise seeds."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, 5, figsize=(20, 3.6))
    panels = [
        ("kl_noisy_clean", "KL(noisy || clean)"),
        ("kl_noisy_base", "KL(noisy || unprompted)"),
        ("explained_kl_test", "held-out explained-KL"),
        ("target_weight", "weight on the true instruction"),
        ("decline_per_sigma", "explained-KL lost per unit sigma\n(since the previous sigma)"),
    ]
    for ax, (col, label) in zip(axes, panels):
        sns.lineplot(
            data=table, x="sigma", y=col, hue="behavior", marker="o", errorbar=("pi", 100), ax=ax
        )
        ax.set(xlabel="noise sigma (x mean token-embedding norm)", ylabel=label)
    verdicts = table.groupby("behavior")["verdict"].first()
    fig.suptitle(
        "Phase 0.5 (bands: min-max over noise seeds). Verdict: "
        + "; ".join(f"{b}: {v}" for b, v in verdicts.items())
    )
    fig.tight_layout()
    _save(fig, out)


def _closure_dots(ax, table: pd.DataFrame, column: str = "kl_closure_test") -> None:
    """One dot per seed with its 95% bootstrap interval, grouped by behaviour and variant."""
    t = table.sort_values(["behavior", "variant", "seed"]).reset_index(drop=True)
    labels = t["behavior"] + "\n" + t["variant"]
    colors = dict(
        zip(sorted(t["variant"].unique()), sns.color_palette(n_colors=t["variant"].nunique()))
    )
    for i, (_, g) in enumerate(t.groupby(labels, sort=False)):
        xs = i + np.linspace(-0.15, 0.15, len(g)) if len(g) > 1 else np.array([float(i)])
        ax.errorbar(
            xs,
            g[column],
            yerr=[g[column] - g["ci_low"], g["ci_high"] - g[column]],
            fmt="o",
            capsize=2,
            color=colors[g["variant"].iloc[0]],
        )
    ax.set_xticks(range(labels.nunique()), list(dict.fromkeys(labels)), fontsize=7)


def training(table: pd.DataFrame, out) -> None:
    """Held-out KL closure per behaviour and variant; one dot per seed with its 95% bootstrap
    interval."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(1.1 * len(table.groupby(["behavior", "variant"])) + 2, 3.8))
    _closure_dots(ax, table)
    ax.axhline(1, color="black", lw=0.6)
    ax.set(
        ylabel="held-out KL closure",
        ylim=(min(0, table["ci_low"].min() - 0.05), 1.02),
        title=f"Soft prompts: KL closure on test messages ({table['seed'].nunique()} seeds; "
        "95% intervals)",
    )
    fig.tight_layout()
    _save(fig, out)


def training_curves(curves: pd.DataFrame, out) -> None:
    """Training loss per step and held-out KL closure at the evaluation steps, per behaviour."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    sns.lineplot(
        data=curves,
        x="step",
        y="loss",
        hue="behavior",
        style="variant",
        errorbar=("pi", 100),
        ax=axes[0],
    )
    axes[0].set(yscale="log", title="training loss (bands: min-max over seeds)")
    ev = curves.dropna(subset=["kl_closure_test"])
    sns.lineplot(
        data=ev,
        x="step",
        y="kl_closure_test",
        hue="behavior",
        style="variant",
        marker="o",
        errorbar=("pi", 100),
        ax=axes[1],
        legend=False,
    )
    axes[1].set(ylabel="held-out KL closure", title="held-out KL closure during training")
    fig.tight_layout()
    _save(fig, out)


def _trained(table: pd.DataFrame) -> pd.DataFrame:
    """The trained soft prompts' rows (their random controls are read in recovery.png)."""
    return table[table["prompt_kind"] == "soft"] if "prompt_kind" in table else table


def phase1(table: pd.DataFrame, out, top: int = 6) -> None:
    """Top signed weights per soft prompt (seed 0 of each variant) at the selected lambda, at the
    weakest and the strictest exclusion level."""
    table = _trained(table)
    levels = _levels(table)
    levels = sorted(
        {levels[0], levels[-1]}, key=levels.index
    )  # the weakest and the strictest level
    t = table[
        (table["weight"] != 0)
        & (table["seed"] == table["seed"].min())
        & table["exclusion"].isin(levels)
    ].copy()
    t["fit"] = t["variant"] + ", exclusion " + t["exclusion"]
    t = t[
        t.groupby(["behavior", "fit"])["weight"].transform(lambda w: w.abs().rank(ascending=False))
        <= top
    ]
    t["label"] = t["atom"] + t["is_target"].map({True: " (true)", False: ""})
    behaviors, fits = sorted(t["behavior"].unique()), sorted(t["fit"].unique())
    fig, axes = plt.subplots(
        len(behaviors),
        len(fits),
        figsize=(4.6 * len(fits), 2.1 * len(behaviors) + 0.5),
        squeeze=False,
    )
    for i, b in enumerate(behaviors):
        for j, fit in enumerate(fits):
            d = t[(t["behavior"] == b) & (t["fit"] == fit)]
            title = f"{b}: {fit}\n{_score(d)}"
            _weight_bars(axes[i, j], d, title, fontsize=8)
    fig.suptitle("Phase 1: PoE weights of trained soft prompts (red = the behaviour's instruction)")
    fig.tight_layout()
    _save(fig, out)


def phase1_path(path: pd.DataFrame, out) -> None:
    """Held-out explained-KL against the number of nonzero atoms along the lambda path."""
    sns.set_theme(style="whitegrid", context="paper")
    p = _trained(path).copy()
    g = sns.relplot(
        data=p,
        x="nnz",
        y="explained_kl_test",
        hue="behavior",
        style="exclusion",
        col="variant",
        kind="line",
        marker="o",
        errorbar=("pi", 100),
        height=3.6,
        aspect=1.3,
    )
    g.set_axis_labels("nonzero atoms", "held-out explained-KL")
    g.figure.suptitle(
        "Phase 1: explained-KL along the lambda path (bands: min-max over seeds)", y=1.03
    )
    _save(g.figure, out)


def reading(*, table: pd.DataFrame, search: pd.DataFrame, out) -> None:
    """Per behaviour: held-out KL closure at each reading stage (soft -> projections -> repaired
    -> pure HotFlip; dots = seeds), and the searches' training loss per step."""
    from .reading import STAGES

    sns.set_theme(style="whitegrid", context="paper")
    behaviors = sorted(table["behavior"].unique())
    fig, axes = plt.subplots(len(behaviors), 2, figsize=(12, 3.6 * len(behaviors)), squeeze=False)
    for row, b in zip(axes, behaviors):
        t, s = table[table["behavior"] == b], search[search["behavior"] == b]
        sns.barplot(
            data=t,
            x="stage",
            y="kl_closure_test",
            hue="variant",
            order=STAGES,
            errorbar=None,
            alpha=0.5,
            ax=row[0],
        )
        sns.stripplot(
            data=t,
            x="stage",
            y="kl_closure_test",
            hue="variant",
            order=STAGES,
            dodge=True,
            legend=False,
            palette="dark:black",
            size=4,
            ax=row[0],
        )
        row[0].axhline(0, color="black", lw=0.6)
        row[0].set(
            ylabel="held-out KL closure", xlabel="", title=f"{b}: soft prompt read as tokens"
        )
        row[0].tick_params(axis="x", labelrotation=15)
        sns.lineplot(
            data=s,
            x="step",
            y="loss",
            hue="search",
            style="variant",
            errorbar=("pi", 100),
            ax=row[1],
        )
        row[1].set(
            ylabel="search loss (train KL)",
            title=f"{b}: coordinate search (bands: min-max over seeds)",
        )
    fig.tight_layout()
    _save(fig, out)


def geometry(table: pd.DataFrame, out) -> None:
    """Norms and nearest-token cosines of soft vectors against natural token embeddings (seed
    004)."""
    import math

    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    t = table.assign(
        group=[
            k if k == "natural" else f"soft ({v})" for k, v in zip(table["kind"], table["variant"])
        ]
    )
    for ax, col, label in [
        (axes[0], "norm", "L2 norm"),
        (axes[1], "nn_cosine", "cosine with the nearest token"),
    ]:
        sns.histplot(
            data=t, x=col, hue="group", stat="density", common_norm=False, element="step", ax=ax
        )
        ax.set(xlabel=label)
    axes[1].axvline(math.cos(math.radians(30)), color="black", ls=":", lw=1)
    axes[1].set_title("dotted: cos 30 deg")
    axes[0].set_title("input-embedding norms: soft vectors vs natural tokens")
    fig.tight_layout()
    _save(fig, out)


def robustness(table: pd.DataFrame, out) -> None:
    """KL closure when soft vectors (and, as the control, the instruction's own tokens) are
    shrunk or rotated toward their nearest token."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    t = table.assign(
        prompt=[
            f"soft ({v})" if k == "soft" else "instruction tokens (control)"
            for k, v in zip(table["target"], table["variant"])
        ]
    )
    for ax, kind, label in [
        (axes[0], "magnitude", "norm divided by"),
        (axes[1], "rotation", "degrees toward nearest token"),
    ]:
        d = t[t["perturbation"] == kind]
        sns.lineplot(
            data=d,
            x="amount",
            y="kl_closure_test",
            hue="prompt",
            style="behavior",
            markers=True,
            errorbar=("pi", 100),
            ax=ax,
        )
        ax.set(
            xlabel=label, ylabel="held-out KL closure", title=f"{kind} (bands: min-max over seeds)"
        )
    axes[0].set_xscale("log", base=2)
    fig.tight_layout()
    _save(fig, out)


def verbalisation(table: pd.DataFrame, out) -> None:
    """The best self-verbalisation candidate's closure as a hard prompt, per behaviour and
    variant."""
    sns.set_theme(style="whitegrid", context="paper")
    best = table[table["is_best"]]
    fig, ax = plt.subplots(figsize=(1.1 * len(best.groupby(["behavior", "variant"])) + 3, 3.8))
    _closure_dots(ax, best)
    ax.axhline(0, color="black", lw=0.6)
    ax.set(
        ylabel="held-out KL closure as a hard prompt",
        title="Self-verbalisation: the candidate best on train messages, scored on test "
        "(95% intervals)",
    )
    fig.tight_layout()
    _save(fig, out)


def dictionary(*, table: pd.DataFrame, path: pd.DataFrame, out) -> None:
    """Held-out explained-KL against nonzeros (paths) and against candidates considered (selected
    fits), per dictionary kind; and the top atoms' semantic similarity to the hidden instruction
    against the same dictionary's random atoms."""
    sns.set_theme(style="whitegrid", context="paper")
    p, t = path.copy(), table.copy()
    for d in (p, t):
        d["dictionary"] = d["dictionary_kind"] + " (" + d["exclusion"] + ")"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    sns.lineplot(
        data=p,
        x="nnz",
        y="explained_kl_test",
        hue="dictionary",
        style="variant",
        marker="o",
        errorbar=("pi", 100),
        ax=axes[0],
    )
    axes[0].set(
        xlabel="nonzero atoms",
        ylabel="held-out explained-KL",
        title="along the lambda path / pursuit",
    )
    sns.scatterplot(
        data=t,
        x="n_candidates",
        y="explained_kl_test",
        hue="dictionary",
        style="variant",
        s=70,
        ax=axes[1],
        legend=False,
    )
    axes[1].set(
        xscale="log",
        xlabel="candidates considered",
        ylabel="held-out explained-KL (selected fit)",
        title="against dictionary size",
    )
    axes[1].axhline(0.9, color="black", lw=0.6, ls=":")
    s = t.melt(
        id_vars=["dictionary", "variant", "behavior"],
        value_vars=["semantic_similarity", "random_similarity"],
        var_name="atoms",
        value_name="cosine",
    )
    s["atoms"] = s["atoms"].map(
        {"semantic_similarity": "top atoms", "random_similarity": "random atoms"}
    )
    sns.barplot(data=s, x="dictionary", y="cosine", hue="atoms", ax=axes[2], errorbar=("pi", 100))
    axes[2].set(
        xlabel="", ylabel="cosine to the hidden instruction", title="semantic recovery (MiniLM)"
    )
    axes[2].tick_params(axis="x", rotation=20, labelsize=7)
    fig.suptitle(
        f"Dictionaries for {', '.join(sorted(t['behavior'].unique()))}: hand-written, generated, "
        "discovered"
    )
    fig.tight_layout()
    _save(fig, out)


def dictionary_atoms(atoms: pd.DataFrame, out, top: int = 8) -> None:
    """The discovered dictionary's top signed atoms per soft prompt at the strictest exclusion
    level, coloured by where each came from."""
    strictest = _levels(atoms)[-1]
    t = atoms[(atoms["dictionary_kind"] == "discovered") & (atoms["exclusion"] == strictest)].copy()
    t = t[
        t.groupby(["behavior", "variant", "seed"])["weight"].transform(
            lambda w: w.abs().rank(ascending=False)
        )
        <= top
    ]
    t["label"] = t["text"].str.slice(0, 48)
    keys = sorted(t.groupby(["behavior", "variant", "seed"]).groups)
    colors = dict(
        zip(
            ["hand-written", "templated", "generated", "verbalised", "repaired"],
            sns.color_palette(n_colors=5),
        )
    )
    fig, axes = plt.subplots(
        len(keys), 1, figsize=(8, 2.2 * max(len(keys), 1) + 0.6), squeeze=False
    )
    for ax, key in zip(axes[:, 0], keys):
        d = t[
            (t["behavior"] == key[0]) & (t["variant"] == key[1]) & (t["seed"] == key[2])
        ].sort_values("weight")
        ax.barh(d["label"], d["weight"], color=[colors.get(k, "gray") for k in d["kind"]])
        ax.axvline(0, color="black", lw=0.6)
        ax.set_title(f"{key[0]} / {key[1]} / seed {key[2]}", fontsize=9)
        ax.tick_params(labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(handles, list(colors), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.suptitle(
        f"Discovered dictionaries at exclusion level {strictest}: top signed atoms (colour = "
        "where the atom came from)"
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _save(fig, out)


def sae_errors(table: pd.DataFrame, out) -> None:
    """SAE relative reconstruction error per layer: soft prompts (bands: min-max over seeds and
    frames) against random tokens in the same slot (dashed) and the instruction's own tokens
    (dotted)."""
    sns.set_theme(style="whitegrid", context="paper")
    behaviors = sorted(table["behavior"].unique())
    fig, axes = plt.subplots(1, len(behaviors), figsize=(4.6 * len(behaviors), 3.8), squeeze=False)
    for ax, b in zip(axes[0], behaviors):
        d = table[table["behavior"] == b]
        sns.lineplot(
            data=d,
            x="layer",
            y="recon_error",
            hue="variant",
            markers=True,
            style="variant",
            errorbar=("pi", 100),
            ax=ax,
        )
        base = d.groupby("layer")["baseline_recon_error"].mean()
        ax.plot(base.index, base.values, color="black", ls="--", lw=1, label="random tokens")
        ref = d.groupby("layer")["instruction_recon_error"].mean().dropna()
        if not ref.empty:
            ax.plot(
                ref.index, ref.values, color="tab:green", ls=":", lw=1.5, label="instruction tokens"
            )
        ax.set_yscale("log")
        ax.set(xlabel="layer (decoder block)", ylabel="relative reconstruction error", title=b)
        ax.set_xticks(sorted(d["layer"].unique()))
        ax.legend(fontsize=7)
    fig.suptitle("SAE reconstruction error at the soft-prompt positions", y=1.02)
    fig.tight_layout()
    _save(fig, out)


def sae_jaccard(table: pd.DataFrame, out) -> None:
    """Jaccard overlap of the soft prompt's active SAE features with its instruction's, per
    behaviour and layer (dots = seeds x frames; dashed = random tokens in the same slot, the
    chance overlap)."""
    import numpy as np

    sns.set_theme(style="whitegrid", context="paper")
    d = table.dropna(subset=["jaccard_with_instruction"])
    layers = sorted(table["layer"].unique())
    fig, axes = plt.subplots(
        1, len(layers), figsize=(3.6 * len(layers), 3.8), squeeze=False, sharey=True
    )
    for ax, layer in zip(axes[0], layers):
        dl = d[d["layer"] == layer]
        if dl.empty:
            ax.set_axis_off()
            continue
        sns.barplot(
            data=dl,
            x="behavior",
            y="jaccard_with_instruction",
            hue="variant",
            errorbar=None,
            alpha=0.5,
            ax=ax,
        )
        sns.stripplot(
            data=dl,
            x="behavior",
            y="jaccard_with_instruction",
            hue="variant",
            dodge=True,
            legend=False,
            palette="dark:black",
            size=3,
            ax=ax,
        )
        chance = dl.groupby("behavior", sort=False)["baseline_jaccard"].mean()
        for i, b in enumerate(ax.get_xticklabels()):
            ax.hlines(
                chance[b.get_text()],
                i - 0.45,
                i + 0.45,
                color="black",
                ls="--",
                lw=1,
                label="random tokens" if i == 0 else None,
            )
        ax.legend(fontsize=7)
        middle = " (middle)" if layer == int(np.median(layers)) else ""
        ax.set(
            title=f"layer {layer}{middle}",
            ylabel="Jaccard with the instruction's features",
            xlabel="",
        )
    fig.suptitle("Active SAE features shared with the ground-truth instruction", y=1.02)
    fig.tight_layout()
    _save(fig, out)


def costs(table: pd.DataFrame, out) -> None:
    """Job-seconds (core time) and peak memory per stage, one dot per job for the memory."""
    from .costs import by_stage

    stages = by_stage(table)
    order = list(stages["stage"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.45 * len(order) + 1.5), sharey=True)
    a.barh(stages["stage"], stages["job_seconds"], color="tab:blue")
    for y, (s, n) in enumerate(zip(stages["job_seconds"], stages["jobs"])):
        a.text(s, y, f" {s:,.0f} s, {n} jobs", va="center", fontsize=8)
    a.set_xlabel("job-seconds (seconds x threads)")
    a.set_title(
        f"total {stages['job_seconds'].sum():,.0f} job-seconds in {int(stages['jobs'].sum())} jobs"
    )
    sns.stripplot(
        data=table,
        x="max_rss_mb",
        y="stage",
        order=order,
        ax=b,
        size=4,
        color="tab:orange",
        jitter=0.2,
    )
    b.set_xlabel("peak memory per job (MB)")
    b.set_ylabel("")
    b.set_title("peak RSS")
    a.invert_yaxis()
    _save(fig, out)


def recovery(table: pd.DataFrame, out) -> None:
    """Each reader's answer as a plug-in hard prompt: held-out closure (with its 95% interval) as
    a fraction of the soft prompt's, and its similarity percentile among the pool's candidates,
    per exclusion level; grey crosses: the controls (a norm-matched random prompt read the same
    way; the trained prompt's answers against another behaviour's instruction)."""
    sns.set_theme(style="whitegrid", context="paper")
    control = (
        table["control"].astype(str) if "control" in table else pd.Series("none", index=table.index)
    )
    readers = list(dict.fromkeys(table["reader"]))  # the table's order (softlens.tables.READERS)
    levels = _levels(table)
    colors = dict(zip(levels, sns.color_palette(n_colors=len(levels))))
    marks = {
        "random_prompt": ("x", "random prompt, same norms"),
        "other_instruction": ("+", "another instruction"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    labelled = set()
    for i, reader in enumerate(readers):
        for j, level in enumerate(levels):
            at = (table["reader"] == reader) & (table["exclusion"] == level)
            d = table[at & (control == "none")]
            offset = i + (j - (len(levels) - 1) / 2) * 0.18
            if not d.empty:
                x = offset + np.linspace(-0.04, 0.04, len(d))
                soft = d["soft_closure_test"]
                axes[0].errorbar(
                    x,
                    d["plugin_closure_test"] / soft,
                    fmt="o",
                    ms=4,
                    capsize=2,
                    color=colors[level],
                    yerr=[
                        (d["plugin_closure_test"] - d["ci_low"]) / soft,
                        (d["ci_high"] - d["plugin_closure_test"]) / soft,
                    ],
                    label=None if level in labelled else level,
                )
                labelled.add(level)
                axes[1].scatter(x, d["similarity_percentile"], color=colors[level], s=16)
            for kind, (marker, name) in marks.items():
                c = table[at & (control == kind)]
                if c.empty:
                    continue
                label = None if kind in labelled else name
                labelled.add(kind)
                x = offset + np.linspace(-0.04, 0.04, len(c))
                if kind == "random_prompt":
                    axes[0].scatter(
                        x, c["fraction_of_soft"], marker=marker, color="0.4", s=22, label=label
                    )
                axes[1].scatter(
                    x, c["similarity_percentile"], marker=marker, color="0.4", s=22, label=label
                )
    for ax in axes:
        ax.set_xticks(range(len(readers)), readers, rotation=15, fontsize=8)
    axes[0].axhline(0.6, color="black", lw=0.6, ls=":")
    axes[0].set(
        ylabel="plug-in closure / soft prompt's closure",
        title="the answer as a hard prompt (95% intervals)",
    )
    axes[0].legend(title="exclusion", fontsize=7)
    axes[1].axhline(0.95, color="black", lw=0.6, ls=":")
    axes[1].set(
        ylabel="similarity percentile in the pool",
        ylim=(-0.02, 1.02),
        title="MiniLM cosine to the hidden instruction, against the pool's candidates",
    )
    if any(k in labelled for k in marks):
        axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Plug-in recovery: one hard prompt per reader and soft prompt")
    fig.tight_layout()
    _save(fig, out)


def weights(table: pd.DataFrame, out) -> None:
    """Soft prompts against teachers made of weights or activations: closure to the teacher, the
    distilled LoRA's own closure to its hard-prompt teacher, and the top Phase 1 atom."""
    if table.empty:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "no soft prompt trained against a LoRA or steering teacher\n"
            "(config/weights.yaml trains some)",
            ha="center",
            va="center",
        )
        _save(fig, out)
        return
    t = table.sort_values(["teacher_kind", "behavior", "variant", "seed"]).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(t)), 4))
    x = np.arange(len(t))
    ax.errorbar(
        x,
        t["kl_closure_test"],
        yerr=[t["kl_closure_test"] - t["ci_low"], t["ci_high"] - t["kl_closure_test"]],
        fmt="o",
        capsize=3,
        label="soft prompt vs teacher",
    )
    own = t["teacher_closure_test"].notna()
    if own.any():
        ax.errorbar(
            x[own] + 0.15,
            t.loc[own, "teacher_closure_test"],
            yerr=[
                t.loc[own, "teacher_closure_test"] - t.loc[own, "teacher_ci_low"],
                t.loc[own, "teacher_ci_high"] - t.loc[own, "teacher_closure_test"],
            ],
            fmt="s",
            color="grey",
            capsize=3,
            label="distilled LoRA vs its hard-prompt teacher",
        )
    for xi, (_, r) in zip(x, t.iterrows()):
        star = "*" if str(r["source_on_top"]) == "True" else ""  # a bool, or its CSV text
        if pd.notna(r.get("relative_closure")):  # a contrastive prompt: its share of the steered's
            ax.annotate(
                "{:.2f}x [{:.2f}, {:.2f}]".format(
                    *r[["relative_closure", "relative_ci_low", "relative_ci_high"]]
                ),
                (xi, r["ci_high"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
        ax.annotate(
            f"{r['top_atom']}{star}",
            (xi, r["ci_low"]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=7,
        )
    ax.set_xticks(x, [f"{r.behavior}\n{r.variant} s{r.seed}" for r in t.itertuples()], fontsize=7)
    ax.set_ylabel("held-out KL closure")
    ax.set_ylim(min(0, t["ci_low"].min() - 0.15), 1.02)
    ax.set_title(
        "Teachers made of weights or activations (label: top Phase 1 atom; * = the source;\n"
        "above a contrastive prompt: its closure over the steering-distilled prompt's)"
    )
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, out)
