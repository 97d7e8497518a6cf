"""Reading a soft prompt with SAEs (seed 001): is it on the natural-language manifold, and does
it use the instruction's features?

At each SAE layer, for the soft vectors in their slot (a contextualised prompt inside each of its
training frames):

- recon_error: the SAE's relative reconstruction error ||x - x^||^2 / ||x||^2, mean over the soft
  positions;
- baseline_recon_error: the same for random ordinary tokens (as many as the prompt has vectors)
  in the same slot and frame, mean over `random_draws` draws: text the SAE has seen the like of;
- jaccard_with_instruction: |S & I| / |S | I| of the features active (z > 0) at any soft position
  (S) and at any token of the behaviour's instruction in the bare slot (I); baseline_jaccard: the
  same for the random tokens' features, the overlap expected by chance.

The activations at the slot depend only on what precedes them (the template's prefix and the
frame's left part), so one sequence per reading suffices.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch

from .sae import SparseAutoencoder, load_sae, relative_error
from .slot import PromptSlot
from .sources import soft_content
from .steering import captured

log = logging.getLogger(__name__)


@torch.no_grad()
def slot_activations(
    lm, slot: PromptSlot, vectors: torch.Tensor, frame, layers
) -> dict[int, torch.Tensor]:
    """{layer: (L, d)} residual stream at the soft positions of `vectors` in the slot (inside
    `frame`)."""
    batch = slot.batch(soft_content(vectors.to(lm.dtype), frame), [""])
    with captured(lm.model, layers) as record:
        lm.model(**batch.model_inputs())
    where = batch.soft_mask[0].cpu()
    return {l: record[l][0][0][where] for l in layers}


@torch.no_grad()
def read_activations(sae: SparseAutoencoder, x: torch.Tensor) -> tuple[float, set[int]]:
    """Mean relative reconstruction error over the rows of x, and the features active at any row."""
    z = sae.encode(x)
    error = float(relative_error(x, sae.decode(z)).mean())
    return error, set(torch.nonzero(z > 0)[:, 1].tolist())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def random_vectors(lm, length: int, draws: int, seed: int) -> list[torch.Tensor]:
    """`draws` sets of `length` random ordinary tokens' embeddings (seeded)."""
    from .geometry import ordinary_token_ids

    ids = ordinary_token_ids(lm)
    g = torch.Generator().manual_seed(seed)
    dev = lm.embeddings.weight.device
    return [
        lm.embeddings(ids[torch.randint(len(ids), (length,), generator=g)].to(dev)).float()
        for _ in range(draws)
    ]


def read_prompt(
    lm,
    slot: PromptSlot,
    saes: dict[int, SparseAutoencoder],
    vectors: torch.Tensor,
    frames,
    instruction: str | None,
    draws: int,
    seed: int,
) -> pd.DataFrame:
    """One row per (frame, layer): the soft prompt's error and features against the baseline and
    the instruction."""
    layers = sorted(saes)
    reference = {}
    if instruction:
        ids = torch.tensor(slot.tokenize(instruction), device=lm.embeddings.weight.device)
        acts = slot_activations(lm, slot, lm.embeddings(ids).float(), None, layers)
        reference = {l: read_activations(saes[l], acts[l]) for l in layers}
    randoms = random_vectors(lm, vectors.shape[0], draws, seed)
    rows = []
    for frame in frames:
        soft = slot_activations(lm, slot, vectors, frame, layers)
        base = [slot_activations(lm, slot, r, frame, layers) for r in randoms]
        for l in layers:
            error, active = read_activations(saes[l], soft[l])
            baseline = [read_activations(saes[l], b[l]) for b in base]
            ref_error, ref_active = reference.get(l, (float("nan"), set()))
            shared = sorted(active & ref_active)
            rows.append(
                {
                    "frame": frame or "___",
                    "layer": l,
                    "recon_error": error,
                    "baseline_recon_error": float(sum(e for e, _ in baseline) / len(baseline)),
                    "instruction_recon_error": ref_error,
                    "jaccard_with_instruction": jaccard(active, ref_active)
                    if instruction
                    else float("nan"),
                    "baseline_jaccard": (
                        sum(jaccard(a, ref_active) for _, a in baseline) / len(baseline)
                        if instruction
                        else float("nan")
                    ),
                    "n_active": len(active),
                    "n_instruction": len(ref_active),
                    "n_shared": len(shared),
                    "shared_features": shared,
                    "active_features": sorted(active),
                    "norm": float(soft[l].norm(dim=-1).mean()),
                }
            )
    return pd.DataFrame(rows)


def run_sae_reading(
    *, job, prompt, sae_dirs, training: dict, random_draws: int, out
) -> pd.DataFrame:
    """The SAE features of one soft prompt (a SoftPrompt, on its ModelJob) beside its
    instruction's."""
    from .io import write_table
    from .training_settings import settings_for

    saes = {}
    for d in sae_dirs:
        sae, cfg = load_sae(d)
        saes[int(cfg["layer"])] = sae
    frames = settings_for(training, prompt.variant).frames
    table = read_prompt(
        job.lm,
        job.slot,
        saes,
        job.soft_prompt(prompt).float(),
        frames,
        job.behavior.get("instruction"),
        random_draws,
        prompt.seed,
    )
    table = table.assign(**prompt.labels())
    log.info(
        "%s %s seed %d:\n%s",
        prompt.behavior,
        prompt.variant,
        prompt.seed,
        table[
            ["frame", "layer", "recon_error", "baseline_recon_error", "jaccard_with_instruction"]
        ],
    )
    write_table(table, out)
    return table
