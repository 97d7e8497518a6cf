"""Where soft vectors sit among the model's token embeddings (seed 004): nearest tokens by cosine
and by L2, norms, nearest-neighbour cosine, and the two perturbations whose effect on KL closure
tells how word-like a soft prompt is: shrinking its magnitude and rotating it toward its nearest
token.

Every comparison is made in the space the slot splices into: the output of the model's input
embedding module (for Gemma that includes its sqrt(d) scale), over *ordinary* tokens only
(special tokens and untrained padding rows of the embedding matrix are never candidates).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch


def ordinary_token_ids(lm) -> torch.Tensor:
    """Ids of every token the tokenizer can produce, special tokens excluded."""
    n = min(len(lm.tokenizer), lm.embeddings.weight.shape[0])
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)), dtype=torch.long)
    keep = torch.ones(n, dtype=torch.bool)
    keep[special[special < n]] = False
    return torch.arange(n)[keep]


@torch.no_grad()
def token_embeddings(lm, chunk: int = 16384) -> torch.Tensor:
    """(V, d) float32 input embeddings of every token id as the slot sees them, on the model's
    device."""
    V = lm.embeddings.weight.shape[0]
    dev = lm.embeddings.weight.device
    return torch.cat(
        [
            lm.embeddings(torch.arange(i, min(V, i + chunk), device=dev)).float()
            for i in range(0, V, chunk)
        ]
    )


class Vocabulary:
    """The ordinary tokens' embeddings, with nearest-token queries by cosine or L2."""

    def __init__(self, lm):
        self.ids = ordinary_token_ids(lm).to(lm.embeddings.weight.device)
        self.all = token_embeddings(lm)  # indexed by token id
        self.E = self.all[self.ids]
        self.norms = self.E.norm(dim=-1)
        self.unit = self.E / self.norms[:, None].clamp(min=1e-12)

    @torch.no_grad()
    def nearest(
        self,
        vectors: torch.Tensor,
        metric: str = "cosine",
        exclude: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
        chunk: int = 4096,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, cosine or L2 distance) of the nearest ordinary token to each vector.

        exclude: a token id per vector that may not be its answer (a natural token's neighbour is
        another token). allowed: bool mask over `self.ids` restricting the candidates.
        """
        if metric not in ("cosine", "l2"):
            raise ValueError(f"metric {metric!r}: expected cosine or l2")
        v = vectors.to(self.E.device, torch.float32)
        ids, vals = [], []
        for i in range(0, v.shape[0], chunk):
            q = v[i : i + chunk]
            if metric == "cosine":
                score = (q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)) @ self.unit.T
            else:  # -||q - e||^2 up to the query's own norm, which does not change the argmax
                score = 2 * q @ self.E.T - self.norms[None, :] ** 2
            if exclude is not None:
                score = score.masked_fill(
                    self.ids[None, :] == exclude[i : i + chunk].to(self.ids.device)[:, None],
                    -math.inf,
                )
            if allowed is not None:
                score = score.masked_fill(~allowed.to(score.device)[None, :], -math.inf)
            best = score.argmax(-1)
            e = self.E[best]
            ids.append(self.ids[best])
            vals.append(
                torch.nn.functional.cosine_similarity(q, e, dim=-1)
                if metric == "cosine"
                else (q - e).norm(dim=-1)
            )
        return torch.cat(ids), torch.cat(vals)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """n ordinary token ids drawn without replacement (the natural-token reference)."""
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(self.ids), generator=g)[:n]
        return self.ids.cpu()[pick]


# --- geometry -------------------------------------------------------------------------------------


def describe_vectors(
    vocab: Vocabulary, vectors: torch.Tensor, tokenizer, exclude: torch.Tensor | None = None
) -> pd.DataFrame:
    """Per vector: its norm, its cosine with the nearest token by cosine, that token, and the L2
    distance to the nearest token by L2 (`exclude`: each vector's own token id, for natural
    tokens).
    """
    cos_ids, cos = vocab.nearest(vectors, "cosine", exclude)
    _, l2 = vocab.nearest(vectors, "l2", exclude)
    return pd.DataFrame(
        {
            "index": np.arange(vectors.shape[0]),
            "norm": vectors.float().norm(dim=-1).cpu().numpy(),
            "nn_cosine": cos.cpu().numpy(),
            "nn_l2": l2.cpu().numpy(),
            "nn_token": [tokenizer.decode([int(i)]) for i in cos_ids.tolist()],
        }
    )


# --- perturbations (seed 004)
# ---------------------------------------------------------------------------


def shrink(vectors: torch.Tensor, factor: float) -> torch.Tensor:
    """Every vector's magnitude divided by `factor` (direction kept)."""
    if factor <= 0:
        raise ValueError(f"magnitude factor {factor}: must be > 0")
    return vectors / factor


def rotate_toward(vectors: torch.Tensor, targets: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate each vector by `degrees` toward its target in the plane they span, keeping its
    norm; where that would pass the target, the vector becomes the target itself (as in seed
    004). Zero degrees returns the vectors exactly (the unperturbed prompt, as magnitude 1 is)."""
    if degrees == 0:
        return vectors.clone()
    v, t = vectors.float(), targets.float().to(vectors.device)
    vn = v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    v_hat, t_hat = v / vn, t / t.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    cos_phi = (v_hat * t_hat).sum(-1, keepdim=True).clamp(-1, 1)
    phi = torch.arccos(cos_phi)
    ortho = t_hat - cos_phi * v_hat
    u = ortho / ortho.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    theta = torch.full_like(phi, math.radians(degrees))
    rotated = vn * (torch.cos(theta) * v_hat + torch.sin(theta) * u)
    return torch.where(theta >= phi, t, rotated).to(vectors.dtype)
