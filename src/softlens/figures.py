"""Figures, each drawn from one tidy table and nothing else."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .io import atomic_path  # noqa: E402


def _save(fig, out) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def phase0(table: pd.DataFrame, out, top: int = 6) -> None:
    """Recovered weights per behaviour at the selected lambda: full dictionary vs leave-one-out."""
    t = table.copy()
    t["fit"] = t["leave_one_out"].map({False: "full dictionary", True: "instruction left out"})
    t = t[t["weight"] != 0]
    t = t[t.groupby(["behavior", "fit"])["weight"].transform(lambda w: w.abs().rank(ascending=False)) <= top]
    t["label"] = t["atom"] + t["is_target"].map({True: " (true)", False: ""})
    behaviors = sorted(t["behavior"].unique())
    fig, axes = plt.subplots(len(behaviors), 2, figsize=(11, 2.2 * len(behaviors) + 0.5), squeeze=False)
    for i, b in enumerate(behaviors):
        for j, fit in enumerate(["full dictionary", "instruction left out"]):
            ax, d = axes[i, j], t[(t["behavior"] == b) & (t["fit"] == fit)].sort_values("weight")
            colors = ["tab:red" if tt else ("tab:blue" if w > 0 else "tab:gray") for tt, w in zip(d["is_target"], d["weight"])]
            ax.barh(d["label"], d["weight"], color=colors)
            ax.axvline(0, color="black", lw=0.6)
            ekl = table[(table["behavior"] == b) & (table["leave_one_out"] == (j == 1))]["explained_kl_test"]
            ax.set_title(f"{b}: {fit} (held-out explained-KL {ekl.iloc[0]:.3f})" if len(ekl) else b, fontsize=9)
            ax.tick_params(labelsize=8)
    fig.suptitle("Phase 0: PoE weights recovered for each known hard prompt (red = the true instruction)")
    fig.tight_layout()
    _save(fig, out)


def phase05(table: pd.DataFrame, out) -> None:
    """KL(noisy||clean), KL(noisy||base) and explained-KL against sigma, spread over noise seeds."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [("kl_noisy_clean", "KL(noisy || clean)"), ("kl_noisy_base", "KL(noisy || unprompted)"),
              ("explained_kl_test", "held-out explained-KL"), ("target_weight", "weight on the true instruction")]
    for ax, (col, label) in zip(axes, panels):
        sns.lineplot(data=table, x="sigma", y=col, hue="behavior", marker="o", errorbar=("pi", 100), ax=ax)
        ax.set(xlabel="noise sigma (x mean token-embedding norm)", ylabel=label)
    verdicts = table.groupby("behavior")["verdict"].first()
    fig.suptitle("Phase 0.5 (bands: min-max over noise seeds). Verdict: "
                 + "; ".join(f"{b}: {v}" for b, v in verdicts.items()))
    fig.tight_layout()
    _save(fig, out)
