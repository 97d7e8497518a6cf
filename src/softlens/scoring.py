"""How a prompt is scored against a teacher: teacher-forced contexts and the teacher's
distributions there (Targets), KL(teacher || student) per position, and the held-out scores every
stage reports (KL closure with its bootstrap interval, early-weighted CE, exact-match@k).

KL closure = 1 - KL(teacher || student) / KL(teacher || unprompted), each the mean over the
messages' first T completion positions (teacher-forced on the teacher's completions).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .intervals import bootstrap_ratio_interval
from .logprobs import fed_completions, forward_scored, length_batches, prefix_cache
from .slot import PromptSlot

# --- targets ------------------------------------------------------------------------------------


@dataclass
class Targets:
    """Teacher-forced contexts of some messages and what the teacher does there (computed once)."""

    messages: list[str]
    fed: list[list[int]]  # completion tokens fed as inputs (T-1 each)
    tokens: torch.Tensor  # (M, T) the teacher's next tokens (CE labels); pad where invalid
    mask: torch.Tensor  # (M, T) valid positions
    logp: torch.Tensor  # (M, T, V) teacher log-probs
    state: torch.Tensor | None  # (M, T, d) teacher residual after block `layer`

    def to(self, device) -> Targets:
        """On the model's device once, so a training step copies nothing from the host (on a GPU
        the (B, T, V) teacher log-probs of a 150k-token vocabulary are ~0.15 GB per batch of 8)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            tokens=move(self.tokens),
            mask=move(self.mask),
            logp=move(self.logp),
            state=move(self.state),
        )


@torch.no_grad()
def distributions(
    lm,
    slot: PromptSlot,
    content,
    messages,
    fed,
    positions: int,
    batch_size: int,
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(M, T, V) log-probs (and (M, T, d) states) of `content` on the contexts, batched."""
    out, states, prefix = None, None, None
    for idx in length_batches(slot, messages, batch_size):
        batch = slot.batch(
            content, [messages[i] for i in idx], [fed[i] for i in idx], padding_side="inner"
        )
        if prefix is None:
            prefix = prefix_cache(lm, batch)
        logp, h = forward_scored(lm, batch, positions, prefix, batch.slot_start, layer)
        if out is None:  # written in place, in the messages' own order: no second (M, T, V) copy
            out = logp.new_empty((len(messages), *logp.shape[1:]), device="cpu")
            states = None if h is None else h.new_empty((len(messages), *h.shape[1:]), device="cpu")
        out[torch.from_numpy(idx)] = logp.cpu()
        if h is not None:
            states[torch.from_numpy(idx)] = h.cpu()
    return out, states


def make_targets(
    lm, slot, content, messages, completions, positions, batch_size, layer=None
) -> Targets:
    fed, tokens, mask = teacher_forcing(completions, positions, slot.pad_id)
    logp, state = distributions(lm, slot, content, messages, fed, positions, batch_size, layer)
    return Targets(list(messages), fed, tokens, mask, logp, state)


def teacher_forcing(completions, positions: int, pad_id: int):
    """The completions' first `positions` tokens as teacher-forced inputs (fed), as labels
    (tokens, (M, T), pad where a completion is shorter) and which positions are valid (mask)."""
    fed = fed_completions(completions, positions, pad_id)
    tokens = torch.full((len(completions), positions), pad_id, dtype=torch.long)
    mask = torch.zeros(len(completions), positions, dtype=torch.bool)
    for m, c in enumerate(completions):
        n = min(positions, len(c))
        tokens[m, :n] = torch.tensor(list(c[:n]))
        mask[m, :n] = True
    return fed, tokens, mask


def cached_targets(
    head, cache: tuple, message_ids, completions, positions: int, pad_id: int, messages
) -> Targets:
    """Targets from a factored cache of the same contexts (softlens.head; `cache` = (keys,
    states, lse) of one source, read with softlens.io): the distributions a behaviour's teacher
    and the unprompted model give are computed once per behaviour, not by every job that scores
    against them. The cache must hold each message's first `positions` positions; positions past
    a completion's end are masked, and filled with the uniform distribution there."""
    keys, states, lse = cache
    index = {k: r for r, k in enumerate(zip(keys["message_id"], keys["position"]))}
    rows, slots = [], []
    for m, (mid, c) in enumerate(zip(message_ids, completions)):
        for t in range(min(positions, len(c))):
            if (mid, t) not in index:
                raise ValueError(
                    f"the cached targets have no row for message {mid} position {t} "
                    f"(a cache of fewer positions than the {positions} asked for?)"
                )
            rows.append(index[mid, t])
            slots.append(m * positions + t)
    logp = torch.full((len(completions) * positions, head.V), -float(np.log(head.V)))
    x, c, on = torch.from_numpy(states), torch.from_numpy(lse), head.weight.device
    step, rows, slots = head.rows_per_chunk(), torch.tensor(rows), torch.tensor(slots)
    for a in range(0, len(rows), step):  # on the head's device (a GPU's, where the model is)
        r = rows[a : a + step]
        logp[slots[a : a + step]] = head.log_probs(x[r].to(on), c[r].to(on)).float().cpu()
    fed, tokens, mask = teacher_forcing(completions, positions, pad_id)
    return Targets(
        list(messages), fed, tokens, mask, logp.view(len(completions), positions, -1), None
    )


# --- KL and the scores --------------------------------------------------------------------


def kl_terms(p_logp: torch.Tensor, q_logp: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) per position, (..., V) -> (...)."""
    return (p_logp.exp() * (p_logp - q_logp)).sum(-1)


def early_weights(mask: torch.Tensor, early_tokens: int, early_weight: float) -> torch.Tensor:
    w = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    w[:, :early_tokens] = early_weight
    return w * mask


def masked_kl(p_logp: torch.Tensor, q_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean KL(P || Q) over the valid positions (a tensor: a training loss or a score)."""
    m = mask.float().to(q_logp.device)
    return (kl_terms(p_logp.to(q_logp.device), q_logp) * m).sum() / m.sum().clamp(min=1)


def mean_kl(targets: Targets, logp: torch.Tensor) -> float:
    return float(masked_kl(targets.logp, logp, targets.mask))


def context_rows(teacher: pd.DataFrame, split: str) -> pd.DataFrame:
    """The teacher table's rows of one split that have a completion (the scored contexts)."""
    rows = teacher[teacher["split"] == split]
    rows = rows[rows["completion_ids"].map(len) > 0]
    if rows.empty:
        raise ValueError(f"the teacher table has no {split} messages with a completion")
    return rows


def contexts(teacher: pd.DataFrame, split: str) -> tuple[list[str], list[list[int]]]:
    rows = context_rows(teacher, split)
    return list(rows["user_message"]), [list(c) for c in rows["completion_ids"]]


def kl_closure(kl_student: float, kl_base: float) -> float:
    return 1.0 - kl_student / kl_base


def closure_interval(
    target: Targets, logp: torch.Tensor, base_logp: torch.Tensor, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of KL closure over the messages (each message's summed KL, student
    and base)."""
    return bootstrap_ratio_interval(
        kl_by_message(target, logp), kl_by_message(target, base_logp), seed=seed
    )


def kl_by_message(target: Targets, logp: torch.Tensor) -> np.ndarray:
    """Each message's KL(P || Q) summed over its valid positions (what intervals resample)."""
    m = target.mask.float()
    return (kl_terms(target.logp, logp) * m).sum(-1).double().numpy()


def early_ce(targets: Targets, logp: torch.Tensor, early_tokens: int, early_weight: float) -> float:
    """Early-weighted teacher-forced cross-entropy of the teacher's tokens under `logp`."""
    w = early_weights(targets.mask, early_tokens, early_weight)
    nll = -logp.gather(-1, targets.tokens[..., None]).squeeze(-1)
    return float((nll * w).sum() / w.sum())


def exact_match(targets: Targets, logp: torch.Tensor, k: int) -> float:
    """Fraction of messages whose greedy continuation starts with the teacher's first k tokens.

    Teacher-forced argmaxes decide it exactly: the greedy continuation agrees with the teacher's
    for k tokens iff at each of those positions, fed the teacher's own prefix, the argmax is its
    token. (Completions shorter than k count over their whole length, EOS included.)
    """
    hit = (logp.argmax(-1) == targets.tokens) | ~targets.mask
    return float(hit[:, :k].all(-1).float().mean())


EXACT_K = (1, 4, 16)  # exact_match_at_{k} columns (seed 003's exact@k)
BY_MESSAGE = ["kl_by_message", "kl_base_by_message"]  # frame_scores(by_message=True)'s arrays


def frame_scores(
    lm,
    slot,
    content,
    target: Targets,
    base: Targets,
    positions,
    batch_size,
    s,
    *,
    by_message: bool = False,
) -> dict:
    """Held-out KL closure, early-weighted CE and exact-match@k of one slot content on the test
    targets; with `by_message`, also each message's summed KL, student and unprompted (in the
    targets' message order), so two prompts on the same messages can be compared pairwise."""
    logp, _ = distributions(lm, slot, content, target.messages, target.fed, positions, batch_size)
    # each message's KL once (a pass over the (M, T, V) distributions): means and interval from it
    by_msg = dict(zip(BY_MESSAGE, (kl_by_message(target, q) for q in (logp, base.logp))))
    valid = float(target.mask.sum())
    kl, kl_base = (float(by_msg[c].sum() / valid) for c in BY_MESSAGE)
    low, high = bootstrap_ratio_interval(*by_msg.values())
    return {
        "kl_test": kl,
        "kl_base_test": kl_base,
        "kl_closure_test": kl_closure(kl, kl_base),
        "ci_low": low,
        "ci_high": high,
        "ce_test": early_ce(target, logp, s.early_tokens, s.early_weight),
        "ce_teacher_test": early_ce(target, target.logp, s.early_tokens, s.early_weight),
        "ce_base_test": early_ce(target, base.logp, s.early_tokens, s.early_weight),
        **{f"exact_match_at_{k}": exact_match(target, logp, k) for k in EXACT_K if k <= positions},
        **(by_msg if by_message else {}),
    }
