"""Repairing a projected prompt in token space: HotFlip / GCG-style coordinate search (seed 003).

Each step takes the gradient of the loss with respect to the one-hot token choice at every slot
position (for token e_v at position l it is e_v . dLoss/dx_l, one matrix product with the
embedding table), keeps the top-k tokens per position, evaluates a batch of random single-token
swaps drawn from them exactly, and keeps the best if it lowers the loss. Started from the
nearest-token projection this is *repair*; started from random tokens it is *pure HotFlip*, the
baseline.

The loss is KL(teacher || prompted) at the first `positions` completion positions of a fixed set
of training messages (or the early-weighted teacher-forced CE), with a contextualised prompt
inside its frames (messages assigned to frames in turn). The text before the slot is encoded
once; every candidate shares that KV cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import ConfigError
from .logprobs import forward_scored, prefix_cache
from .scoring import Targets, early_weights, kl_terms
from .sources import soft_content

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSettings:
    steps: int = 20
    top_k: int = 64
    candidates: int = 32  # single-token swaps evaluated exactly per step
    messages: int = 8  # training messages the loss is measured on
    select_messages: int = 16  # other training messages that choose the best step (validation)
    positions: int = 16  # completion positions per message
    loss: str = "kl"  # kl | ce (early-weighted teacher-forced CE)
    early_tokens: int = 32
    early_weight: float = 3.0
    require_roundtrip: bool = True  # only candidates whose text tokenizes back to the same ids
    batch_size: int = 64  # sequences per forward when evaluating candidates

    def __post_init__(self):
        for key in (
            "steps",
            "top_k",
            "candidates",
            "messages",
            "select_messages",
            "positions",
            "batch_size",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"reading.search.{key} = {getattr(self, key)}: must be at least 1"
                )
        if self.loss not in ("kl", "ce"):
            raise ConfigError(f"reading.search.loss = {self.loss!r}: expected kl or ce")


def banned_token_ids(tokenizer, texts) -> set[int]:
    """The tokens of each text and their case variants (lower, upper, capitalised; with and
    without a leading space) where a variant is itself one token: what a repaired prompt may not
    use, so that it cannot simply restate the instruction."""
    banned = set()
    for text in texts:
        for t in tokenizer(text, add_special_tokens=False)["input_ids"]:
            banned.add(t)
            core = tokenizer.decode([t]).strip()
            for v in {core, core.lower(), core.upper(), core.capitalize()} - {""}:
                for form in (v, " " + v):
                    ids = tokenizer(form, add_special_tokens=False)["input_ids"]
                    if len(ids) == 1:
                        banned.add(ids[0])
    return banned


def roundtrips(tokenizer, ids) -> bool:
    """Does the decoded text tokenize back to exactly these ids (so it can be used as text)?"""
    return tokenizer(tokenizer.decode(list(ids)), add_special_tokens=False)["input_ids"] == list(
        ids
    )


class SearchObjective:
    """The loss of token sequences (as slot contents) on fixed training contexts, batched."""

    def __init__(self, lm, slot, targets: Targets, frames, table: torch.Tensor, s: SearchSettings):
        self.lm, self.slot, self.s, self.table = (
            lm,
            slot,
            s,
            table,
        )  # table: (V, d) embeddings by token id
        self.targets = targets.to(lm.device)
        n = len(targets.messages)
        # per frame: the contexts measured inside it (messages take the frames in turn)
        self.groups = [
            (frame, list(range(f, n, len(frames)))) for f, frame in enumerate(frames) if f < n
        ]
        self.weights = (
            early_weights(self.targets.mask, s.early_tokens, s.early_weight)
            if s.loss == "ce"
            else self.targets.mask.float()
        )
        # (frame, L) -> (batch, soft positions, KV cache of the text before the slot)
        self._templates: dict = {}

    def _template(self, frame, idx, L):
        key = (frame, L)
        if key not in self._templates:
            vectors = torch.zeros(
                L, self.table.shape[1], device=self.lm.device, dtype=self.lm.dtype
            )
            batch = self.slot.batch(
                soft_content(vectors, frame),
                [self.targets.messages[i] for i in idx],
                [self.targets.fed[i] for i in idx],
                padding_side="inner",
            )
            pos = batch.soft_mask[0].nonzero().squeeze(-1)
            self._templates[key] = (batch, pos, prefix_cache(self.lm, batch))
        return self._templates[key]

    def _row_losses(self, logp, idx) -> torch.Tensor:
        """Weighted loss summed per row (the weights are the valid positions, or the early
        weights)."""
        i = torch.tensor(idx, device=logp.device).repeat(logp.shape[0] // len(idx))
        if self.s.loss == "kl":
            per = kl_terms(self.targets.logp[i], logp)
        else:
            per = -logp.gather(-1, self.targets.tokens[i][..., None]).squeeze(-1)
        return (per * self.weights[i]).sum(-1)

    def gradient(self, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
        """(loss, dLoss/dx) for the slot embeddings x (L, d) of `ids`."""
        x = self.table[ids].to(self.lm.dtype).detach().requires_grad_(True)
        total = 0.0
        for frame, idx in self.groups:
            batch, _, prefix = self._template(frame, idx, len(ids))
            live = self.slot.batch(
                soft_content(x, frame),
                [self.targets.messages[i] for i in idx],
                [self.targets.fed[i] for i in idx],
                padding_side="inner",
            )
            logp, _ = forward_scored(self.lm, live, self.s.positions, prefix, live.slot_start)
            loss = self._row_losses(logp, idx).sum() / self.weights.sum()
            loss.backward()
            total += float(loss.detach())
        return total, x.grad.float()

    @torch.no_grad()
    def losses(self, candidates: torch.Tensor) -> torch.Tensor:
        """Loss of each of C token sequences (C, L): exact forwards, candidates x contexts in
        chunks."""
        C, L = candidates.shape
        sums = torch.zeros(C, device=self.lm.device)
        for frame, idx in self.groups:
            batch, pos, prefix = self._template(frame, idx, L)
            m = len(idx)
            per_chunk = max(1, self.s.batch_size // m)
            for c0 in range(0, C, per_chunk):
                cand = candidates[c0 : c0 + per_chunk]
                c = cand.shape[0]
                x = batch.inputs_embeds.repeat(c, 1, 1)
                x[:, pos] = self.table[cand].to(x.dtype).repeat_interleave(m, 0)
                big = replace(
                    batch,
                    inputs_embeds=x,
                    attention_mask=batch.attention_mask.repeat(c, 1),
                    position_ids=batch.position_ids.repeat(c, 1),
                )
                logp, _ = forward_scored(self.lm, big, self.s.positions, prefix, batch.slot_start)
                sums[c0 : c0 + c] += self._row_losses(logp, idx).view(c, m).sum(-1)
        return (sums / self.weights.sum()).cpu()


def random_start(
    allowed: torch.Tensor,
    length: int,
    generator: torch.Generator,
    tokenizer,
    require_roundtrip: bool = True,
    attempts: int = 100,
) -> list[int]:
    """Random allowed tokens for pure HotFlip: the first draw whose text tokenizes back to it
    (when required and found within `attempts` draws), else the last draw."""
    for _ in range(attempts):
        ids = allowed.cpu()[torch.randint(len(allowed), (length,), generator=generator)].tolist()
        if not require_roundtrip or roundtrips(tokenizer, ids):
            break
    return ids


def coordinate_search(
    objective: SearchObjective,
    init_ids,
    allowed: torch.Tensor,
    s: SearchSettings,
    seed: int,
    tokenizer,
    desc: str = "hotflip",
) -> tuple[list[int], pd.DataFrame]:
    """Greedy single-token coordinate search from `init_ids` over the `allowed` token ids.

    Returns the best ids found and the per-step record (step, loss of the best so far, its text
    and ids, swaps tried, seconds); step 0 is the starting point.
    """
    if len(allowed) == 0:
        raise ConfigError("reading.search: the banned list bans every candidate token")
    device = objective.lm.device
    allowed = allowed.to(device)
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(list(init_ids), device=device)
    L, k = len(ids), min(s.top_k, len(allowed))
    loss = float(objective.losses(ids[None])[0])
    history = [
        {
            "step": 0,
            "loss": loss,
            "text": tokenizer.decode(ids.tolist()),
            "ids": ids.tolist(),
            "tried": 0,
            "seconds": 0.0,
        }
    ]
    for step in tqdm(range(1, s.steps + 1), desc=desc, unit="step", leave=False):
        t0 = time.perf_counter()
        # Round trips are required once the current prompt makes one: a projection that does not
        # (one odd byte token) must still be repairable, one swap at a time.
        strict = s.require_roundtrip and roundtrips(tokenizer, ids.tolist())
        _, grad = objective.gradient(ids)
        scores = -(grad @ objective.table[allowed].T)  # (L, |allowed|): first-order loss decrease
        top = allowed[scores.topk(k, dim=-1).indices]  # (L, k) token ids
        candidates, seen = [], {tuple(ids.tolist())}
        for _ in range(4 * s.candidates):  # draw until enough distinct (round-tripping) swaps
            if len(candidates) == s.candidates:
                break
            p = int(torch.randint(L, (1,), generator=g))
            cand = ids.clone()
            cand[p] = top[p, int(torch.randint(k, (1,), generator=g))]
            key = tuple(cand.tolist())
            if key in seen or (strict and not roundtrips(tokenizer, key)):
                seen.add(key)
                continue
            seen.add(key)
            candidates.append(cand)
        if candidates:
            cand_losses = objective.losses(torch.stack(candidates))
            j = int(cand_losses.argmin())
            if float(cand_losses[j]) < loss:
                ids, loss = candidates[j], float(cand_losses[j])
        history.append(
            {
                "step": step,
                "loss": loss,
                "text": tokenizer.decode(ids.tolist()),
                "ids": ids.tolist(),
                "tried": len(candidates),
                "seconds": time.perf_counter() - t0,
            }
        )
    return ids.tolist(), pd.DataFrame(history)
