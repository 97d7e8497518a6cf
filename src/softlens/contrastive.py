"""Contrastive soft prompts (seed 001's "natural next experiment"): the slot learns directly from a
steering behaviour's positive and negative texts and never sees its steering vector.

Objective: DPO (Rafailov et al., 2023) with the unprompted model as the reference. For a train
message n and a pair (positive p, negative q) of the behaviour's texts, each read as the
assistant's reply to n,

    loss = -log sigmoid(beta * [(log p_v(p|n) - log p_0(p|n)) - (log p_v(q|n) - log p_0(q|n))])

where p_v is the model with the soft prompt in its slot and p_0 the unprompted model. Why this one:
it raises the positive continuations relative to the negative ones, the contrast the steering
vector's mean difference is made of; the reference terms credit the prompt only for what it changes
(not for a text the model finds likely anyway); and the log-sigmoid saturates once a pair is apart
by a few 1/beta nats, so the prompt is not pushed to make the negatives impossible at any cost (an
unbounded likelihood-ratio objective is). Every positive is paired with every negative: the mean
difference pairs no text with another.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .logprobs import Student, fed_completions
from .scoring import contexts


class Contrastive:
    """The contrastive objective on (train message, positive, negative) triples; called like
    training.Distillation (student, slot content, triple indices)."""

    def __init__(self, job, s, *, beta: float, source: str):
        spec = job.behavior["steering"]  # the source's texts (config.with_derived_teachers)
        self.s, self.beta, self.source = s, beta, source
        self.messages, _ = contexts(job.teacher, "train")
        self.positive, self.negative = spec["positive"], spec["negative"]
        texts = [*self.positive, *self.negative]
        ids = [job.lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        self.positions = min(s.positions, max(map(len, ids)))
        self.fed = fed_completions(ids, self.positions, job.slot.pad_id)
        self.tokens = torch.full((len(ids), self.positions), job.slot.pad_id, dtype=torch.long)
        self.mask = torch.zeros(len(ids), self.positions, dtype=torch.bool)
        for i, t in enumerate(ids):
            n = min(self.positions, len(t))
            self.tokens[i, :n], self.mask[i, :n] = torch.tensor(t[:n]), True
        self.triples = list(
            itertools.product(
                range(len(self.messages)),
                range(len(self.positive)),
                range(len(self.positive), len(texts)),
            )
        )
        self.reference = self._reference(job)

    def __len__(self) -> int:
        return len(self.triples)

    def describe(self) -> dict:
        return {
            "objective": "contrastive (DPO, unprompted reference)",
            "beta": self.beta,
            "source": self.source,
            "positives": len(self.positive),
            "negatives": len(self.negative),
            "messages": len(self.messages),
        }

    def _logp(self, student, content, pairs: list[tuple[int, int]]) -> torch.Tensor:
        """log p(text | message) of each (message, text) pair under `content`: the sum over the
        text's tokens (at most `positions` of them)."""
        logp, _ = student(
            content,
            [self.messages[m] for m, _ in pairs],
            [self.fed[t] for _, t in pairs],
            self.positions,
        )
        texts = [t for _, t in pairs]
        tokens = self.tokens[texts].to(logp.device)
        picked = logp.gather(-1, tokens[..., None]).squeeze(-1)
        return (picked * self.mask[texts].to(logp.device)).sum(-1)

    @torch.no_grad()
    def log_likelihoods(self, student, content, batch_size: int) -> torch.Tensor:
        """log p(text | message) of every message and text under `content`, (M, texts)."""
        pairs = list(itertools.product(range(len(self.messages)), range(len(self.fed))))
        out = [
            self._logp(student, content, pairs[i : i + batch_size])
            for i in range(0, len(pairs), batch_size)
        ]
        return torch.cat(out).float().cpu().view(len(self.messages), len(self.fed))

    def _reference(self, job) -> torch.Tensor:
        """log p_0(text | message): the unprompted model's log_likelihoods."""
        return self.log_likelihoods(Student(job.lm, job.slot), None, job.batch_size)

    def mean_margin(self, student, content, batch_size: int) -> float:
        """The DPO margin (nats) of `content` averaged over every triple: since the triples are
        every (message, positive, negative), the mean reward of the positive texts minus that of
        the negative ones."""
        reward = self.log_likelihoods(student, content, batch_size) - self.reference
        n = len(self.positive)
        return float(reward[:, :n].mean() - reward[:, n:].mean())

    def __call__(self, student, content, idx: list[int]) -> dict[str, torch.Tensor]:
        batch = [self.triples[i] for i in idx]
        chosen = [(m, p) for m, p, _ in batch]
        rejected = [(m, q) for m, _, q in batch]
        logp = self._logp(student, content, chosen + rejected)
        ref = torch.tensor([self.reference[m, t] for m, t in chosen + rejected], device=logp.device)
        reward = logp - ref  # what the prompt adds to each text's log-likelihood (nats)
        margin = reward[: len(batch)] - reward[len(batch) :]
        return {
            "loss": -F.logsigmoid(self.beta * margin).mean(),
            "margin": margin.mean(),
            "accuracy": (margin > 0).float().mean(),
        }
