"""How far a hidden-instruction experiment keeps the answer out of reach.

An experiment that must explain a behaviour without being handed its instruction (a leave-one-out
fit, a discovered dictionary) is run at each level below; each level removes what the one before
it does, and more. Removed candidates stay in the tables with the level and the reason.

- ``none``: nothing removed (the instruction itself may be in reach: a positive control);
- ``lexical``: the instruction, anything containing it or contained in it (case- and
  punctuation-folded words), and anything sharing word-set Jaccard >= ``lexical_jaccard`` with
  it;
- ``semantic``: also anything whose sentence embedding (MiniLM) has cosine >=
  ``semantic_threshold`` with the instruction: its paraphrases;
- ``reveal``: also anything that contains one of the behaviour's giveaway words (for Spanish:
  spanish, español, castellano), which name the answer without paraphrasing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import ConfigError
from .pool import jaccard, normalise

LEVELS = ("none", "lexical", "semantic", "reveal")


@dataclass(frozen=True)
class ExclusionSettings:
    levels: tuple[str, ...] = LEVELS
    lexical_jaccard: float = 0.6
    semantic_threshold: float = 0.75

    def __post_init__(self):
        unknown = [x for x in self.levels if x not in LEVELS]
        if unknown or not self.levels:
            raise ConfigError(
                f"exclusion.levels = {list(self.levels)}: each must be one of {list(LEVELS)}"
            )
        object.__setattr__(self, "levels", tuple(sorted(set(self.levels), key=LEVELS.index)))
        for key in ("lexical_jaccard", "semantic_threshold"):
            if not 0 < getattr(self, key) <= 1:
                raise ConfigError(f"exclusion.{key} = {getattr(self, key)}: must be in (0, 1]")


def _contains(a: str, b: str) -> bool:
    """Word-sequence containment of normalised b in normalised a."""
    return bool(b) and f" {b} " in f" {a} "


def exclusions(
    texts: list[str],
    hidden: str | None,
    giveaways: list[str],
    settings: ExclusionSettings,
    embed=None,
) -> pd.DataFrame:
    """Per text: `excluded_at` (the first level that removes it, "" if none does), the reason,
    and `similarity` (MiniLM cosine to the hidden instruction; NaN without one). `embed`
    (softlens.semantic Embedder) is needed for the semantic level."""
    n = len(texts)
    out = pd.DataFrame(
        {"excluded_at": [""] * n, "exclusion_reason": [""] * n, "similarity": np.full(n, np.nan)}
    )
    if not hidden or not normalise(hidden) or n == 0:
        return out
    h = normalise(hidden)
    folded = [normalise(t) for t in texts]
    jac = jaccard(list(texts), [hidden])[:, 0]
    if "semantic" in settings.levels:
        if embed is None:
            raise ValueError("the semantic exclusion level needs a sentence embedder")
        from .semantic import similarity

        out["similarity"] = similarity(embed, list(texts), hidden)
    words = [normalise(g) for g in giveaways if normalise(g)]
    for i, t in enumerate(folded):
        if _contains(t, h) or _contains(h, t):
            level, reason = (
                "lexical",
                "contains the instruction" if _contains(t, h) else "contained in the instruction",
            )
        elif jac[i] >= settings.lexical_jaccard:
            level, reason = "lexical", f"word Jaccard {jac[i]:.2f}"
        elif out.at[i, "similarity"] >= settings.semantic_threshold:
            level, reason = "semantic", f"cosine {out.at[i, 'similarity']:.2f}"
        elif hit := next((g for g in words if _contains(t, g)), None):
            level, reason = "reveal", f"giveaway {hit!r}"
        else:
            continue
        out.at[i, "excluded_at"], out.at[i, "exclusion_reason"] = level, reason
    return out


def atom_levels(atoms: pd.DataFrame) -> pd.Series:
    """A dictionary's `excluded_at` per atom; without exclusions computed, at least the
    instruction's own atom (`is_target`) is lexical, so no experiment is handed the answer by
    omission."""
    if "excluded_at" in atoms:
        return atoms["excluded_at"].fillna("").astype(str)
    return pd.Series(np.where(atoms["is_target"], "lexical", ""), index=atoms.index)


def kept_at(excluded_at, level: str) -> np.ndarray:
    """Boolean mask of what an experiment at `level` may use (levels are cumulative)."""
    rank = LEVELS.index(level)
    return np.array([e == "" or LEVELS.index(e) > rank for e in excluded_at], dtype=bool)


def run_atom_exclusions(
    *, spec: dict, atoms: pd.DataFrame, settings: ExclusionSettings, out
) -> pd.DataFrame:
    """A behaviour's dictionary atoms with the level that excludes each (columns atom, prompt,
    excluded_at, exclusion_reason, similarity): what its leave-one-out fits and discovery may not
    use."""
    from .io import write_table

    hidden = spec.get("instruction")
    embed = None
    if hidden and "semantic" in settings.levels:
        from .semantic import Embedder

        embed = Embedder()
    table = pd.concat(
        [
            atoms[["atom", "prompt"]].reset_index(drop=True),
            exclusions(list(atoms["prompt"]), hidden, spec.get("giveaways", []), settings, embed),
        ],
        axis=1,
    )
    write_table(
        table,
        out,
        metadata={"behavior": spec["name"], "hidden": hidden, "settings": settings.__dict__},
    )
    return table


def with_exclusions(atoms: pd.DataFrame, path) -> pd.DataFrame:
    """The fit's atoms with `excluded_at` from a behaviour's exclusion table
    (run_atom_exclusions)."""
    table = pd.read_parquet(path).set_index("atom")
    missing = sorted(set(atoms["atom"]) - set(table.index))
    if missing:
        raise ValueError(f"{path} has no exclusion level for atoms {missing}: rebuild it")
    return atoms.assign(excluded_at=table.loc[atoms["atom"], "excluded_at"].to_numpy())
