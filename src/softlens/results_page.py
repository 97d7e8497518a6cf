"""The measured-results page (results/RESULTS.md): every number on it is read from a table in
results/tables/ by this module when the workflow's `results_page` rule runs, so no number can
drift from its table. Test scores carry their 95% bootstrap intervals over the test messages."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TOP = 3  # atoms shown per fit


def interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def with_interval(t: pd.DataFrame, score: str) -> list[str]:
    """Each row's `score` with its interval (columns ci_low, ci_high)."""
    return [interval(*r) for r in t[[score, "ci_low", "ci_high"]].to_numpy()]


def markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".3f")


def top_atoms(rows: pd.DataFrame, n: int = TOP) -> str:
    """The fit's largest |weight| atoms, signed."""
    rows = rows[rows["weight"] != 0]
    rows = rows.reindex(rows["weight"].abs().sort_values(ascending=False).index).head(n)
    return ", ".join(f"{a} {w:+.2f}" for a, w in zip(rows["atom"], rows["weight"]))


def training_section(t: pd.DataFrame) -> str:
    rows = t.assign(closure=with_interval(t, "kl_closure_test"))
    rows = rows[["behavior", "variant", "seed", "closure", "kl_closure_test_bare", "steps"]]
    return (
        "## Soft prompts (`training.csv`)\n\nHeld-out KL closure in the training frames, and in "
        "the bare "
        "slot.\n\n"
        + markdown(
            rows.rename(
                columns={
                    "closure": "closure [95% CI]",
                    "kl_closure_test_bare": "closure, bare slot",
                }
            )
        )
    )


def decomposition_section(t: pd.DataFrame, title: str, keys: list[str]) -> str:
    """One row per decomposed source and exclusion level: held-out explained-KL and the top
    atoms."""
    rows = []
    for key, fit in t.groupby(keys + ["exclusion"], sort=False):
        first = fit.iloc[0]
        rows.append(
            {
                **dict(zip(keys + ["exclusion"], key)),
                "own closure": first.get("target_closure_test", float("nan")),
                "explained-KL [95% CI]": interval(
                    first["explained_kl_test"], first["ci_low"], first["ci_high"]
                ),
                "nonzero": int(first["nnz"]),
                "top atoms": top_atoms(fit),
            }
        )
    return f"## {title}\n\n" + markdown(pd.DataFrame(rows))


def noise_section(t: pd.DataFrame) -> str:
    rows = t.assign(explained=with_interval(t, "explained_kl_test"))
    rows = rows[["behavior", "seed", "sigma", "explained", "target_weight", "verdict"]]
    return "## Phase 0.5: noise on the instruction's embeddings (`phase05.csv`)\n\n" + markdown(
        rows.rename(
            columns={
                "explained": "explained-KL [95% CI]",
                "target_weight": "weight on the instruction",
            }
        )
    )


def dictionary_section(t: pd.DataFrame) -> str:
    rows = t.assign(
        explained=with_interval(t, "explained_kl_test"),
        top=t["top_atoms"].astype(str).str.slice(0, 90),
    )
    rows = rows[
        [
            "behavior",
            "variant",
            "seed",
            "dictionary_kind",
            "exclusion",
            "n_candidates",
            "nnz",
            "explained",
            "top",
        ]
    ]
    return (
        "## Discovered dictionaries (`dictionary.csv`)\n\nHeld-out explained-KL of each "
        "dictionary at each "
        "exclusion level (the pursuit's step and lambda chosen on train messages).\n\n"
        + markdown(rows.rename(columns={"explained": "explained-KL [95% CI]", "top": "top atoms"}))
    )


def recovery_section(t: pd.DataFrame) -> str:
    t = t.drop_duplicates(
        ["behavior", "variant", "seed", "control", "reader", "exclusion", "text", "compared_to"]
    )
    rows = t.assign(
        closure=with_interval(t, "plugin_closure_test"),
        answer=t["text"].astype(str).str.slice(0, 60),
    )
    rows = rows[
        [
            "behavior",
            "variant",
            "control",
            "reader",
            "exclusion",
            "answer",
            "closure",
            "fraction_of_soft",
            "similarity_percentile",
        ]
    ]
    return (
        "## Plug-in recovery (`recovery.csv`)\n\nEach reader's one prompt alone in the slot, "
        "scored against "
        "the teacher; its fraction of the soft prompt's own closure on the same contexts; the "
        "similarity "
        "percentile of its meaning to the hidden instruction among the pool's candidates. "
        "Controls: "
        "`random_prompt` (a norm-matched random prompt read the same way), `other_instruction` "
        "(the answer "
        "compared with another behaviour's instruction).\n\n"
        + markdown(
            rows.rename(
                columns={
                    "closure": "plug-in closure [95% CI]",
                    "fraction_of_soft": "fraction of soft",
                    "similarity_percentile": "similarity percentile",
                }
            )
        )
    )


def reading_section(t: pd.DataFrame) -> str:
    rows = t.assign(
        closure=with_interval(t, "kl_closure_test"),
        text=t["text"].fillna("").astype(str).str.slice(0, 60),
    )
    rows = rows[["behavior", "variant", "seed", "stage", "text", "closure"]]
    return "## Reading (`reading.csv`)\n\n" + markdown(
        rows.rename(columns={"closure": "closure [95% CI]"})
    )


def sae_section(t: pd.DataFrame) -> str:
    per = (
        t.groupby("layer")[
            ["recon_error", "baseline_recon_error", "jaccard_with_instruction", "baseline_jaccard"]
        ]
        .mean()
        .reset_index()
    )
    return (
        "## Sparse-autoencoder reading (`sae.csv`)\n\nMeans over every soft prompt and frame: "
        "reconstruction error of the soft vectors against random tokens', and feature overlap "
        "with the "
        "instruction against random tokens'.\n\n" + markdown(per)
    )


def weights_section(t: pd.DataFrame) -> str:
    if t.empty:
        return (
            "## Teachers made of weights (`weights.csv`)\n\nNo soft prompt of this run was trained "
            "against a LoRA or steering teacher."
        )
    t = t.assign(
        soft=with_interval(t, "kl_closure_test"),
        teacher=[
            "" if pd.isna(v) else interval(v, lo, hi)
            for v, lo, hi in t[
                ["teacher_closure_test", "teacher_ci_low", "teacher_ci_high"]
            ].to_numpy()
        ],
        relative=[
            "" if pd.isna(v) else interval(v, lo, hi)
            for v, lo, hi in t[
                ["relative_closure", "relative_ci_low", "relative_ci_high"]
            ].to_numpy()
        ],
    )
    rows = t[
        [
            "behavior",
            "teacher_kind",
            "rank",
            "variant",
            "seed",
            "teacher",
            "soft",
            "top_atom",
            "top_weight",
            "explained_kl_test",
            "source_on_top",
            "relative",
        ]
    ]
    return (
        "## Teachers made of weights (`weights.csv`)\n\nThe teacher's own closure to its source "
        "(a distilled LoRA to its hard-prompt teacher), the soft prompt's closure to the teacher, "
        "the top atom of the prompt's Phase 1 decomposition at exclusion `none`, and a contrastive "
        "prompt's closure relative to the prompt distilled from its source's steering teacher "
        "(paired bootstrap over the test messages).\n\n"
        + markdown(
            rows.rename(
                columns={
                    "teacher": "teacher closure [95% CI]",
                    "soft": "soft closure [95% CI]",
                    "relative": "relative closure [95% CI]",
                }
            )
        )
    )


def costs_section(t: pd.DataFrame) -> str:
    per = t.groupby("stage").agg(
        jobs=("seconds", "size"),
        job_seconds=("seconds", "sum"),
        slowest_s=("seconds", "max"),
        peak_rss_mb=("max_rss_mb", "max"),
    )
    per = per.sort_values("job_seconds", ascending=False).reset_index()
    total = f"{len(t)} benchmarked jobs, {t['seconds'].sum():,.0f} job-seconds."
    return "## Costs (`costs.csv`)\n\n" + total + "\n\n" + markdown(per)


SECTIONS = [  # table, how it is shown
    ("training", training_section),
    (
        "phase0",
        lambda t: decomposition_section(
            t,
            "Phase 0: each teacher decomposed over the hand-written dictionary (`phase0.csv`)",
            ["behavior"],
        ),
    ),
    ("phase05", noise_section),
    (
        "phase1",
        lambda t: decomposition_section(
            t,
            "Phase 1: trained soft prompts and their random controls decomposed (`phase1.csv`)",
            ["behavior", "variant", "seed", "prompt_kind"],
        ),
    ),
    ("dictionary", dictionary_section),
    ("recovery", recovery_section),
    ("reading", reading_section),
    ("sae", sae_section),
    ("weights", weights_section),
    ("costs", costs_section),
]


def run_configs(paths, workdir: str | Path = ".") -> list[str]:
    """A run's config files (Snakemake's `workflow.configfiles`: each --configfile, then the
    Snakefile's own, which may repeat one of them), each once, in order, relative to `workdir`
    where inside it."""
    root, seen, out = Path(workdir).resolve(), set(), []
    for p in map(Path, paths):
        full = (root / p).resolve()
        if full not in seen:
            seen.add(full)
            out.append(str(full.relative_to(root)) if full.is_relative_to(root) else str(full))
    return out


def run_command(configs: list[str], default: str = "config/config.yaml") -> str:
    """The command that makes a run of `configs`: the plain one for the default config alone."""
    extra = "" if configs in ([], [default]) else " --configfile " + " ".join(configs)
    return "snakemake --cores all" + extra


def results_page(*, tables: dict[str, Path], configs: list[str], command: str) -> str:
    """The page from the tables that exist (`tables`: name -> CSV), naming the configs and
    command."""
    head = (
        "# Measured results\n\nBuilt by the workflow's `results_page` rule from "
        "`results/tables/`: every "
        "number below is read from the table its section names. Configs: "
        + ", ".join(f"`{c}`" for c in configs)
        + f"; command: `{command}`. A run that was interrupted, "
        "patched or forced is not a measurement: rebuild from a clean, uninterrupted run before "
        "citing."
    )
    parts = [head]
    for name, section in SECTIONS:
        if name in tables:
            parts.append(section(pd.read_csv(tables[name], keep_default_na=False, na_values=[""])))
    return "\n\n".join(parts) + "\n"
