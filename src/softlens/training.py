"""Soft-prompt training: L vectors in the slot learn to make the frozen model act like its teacher
(the same model with a hard prompt, a steering vector, a PEFT prompt or a LoRA).

Distillation (weights from config): KL(teacher || student) over the full next-token distributions at
the first T completion positions of the teacher's own completions (teacher-forced); optionally
the early-weighted teacher-forced CE of seed 003 (the first `early_tokens` tokens weighted
`early_weight`) and internal-state matching (relative squared error of the residual stream after
block `state_layer` against the teacher's, at the same positions). A contrastive behaviour's
prompts learn from its steering texts instead (softlens.contrastive); the loop is the same.

Variants: *prepend* trains the vectors alone in the slot; *contextualised* trains them inside a
frame ("Be ___.") sampled every step from a list (seed 001).

Speed: the teacher's distributions are computed once per job; the text before the slot is encoded
once and its KV cache reused every step; logits are computed only at the T scored positions.
Determinism: every random choice (init, batches, frames) comes from one seeded generator whose
state is checkpointed with the vectors and Adam's moments, so a resumed run equals an
uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoints import load_checkpoint, save_checkpoint
from .config import ConfigError
from .job import ModelJob, SoftPrompt
from .logprobs import Student
from .scoring import Targets, distributions, early_weights, masked_kl, mean_kl
from .slot import PromptSlot
from .sources import soft_content
from .training_settings import TrainSettings, settings_for

log = logging.getLogger(__name__)

# --- objective ------------------------------------------------------------------------------------


def losses(
    s: TrainSettings, q_logp, q_state, target_logp, target_state, tokens, mask
) -> dict[str, torch.Tensor]:
    """The objective's terms on one batch (means over valid positions) and their weighted sum."""
    m = mask.float().to(q_logp.device)
    n = m.sum().clamp(min=1)
    terms = {"kl": masked_kl(target_logp, q_logp, mask)}
    if s.ce_weight:
        w = early_weights(mask, s.early_tokens, s.early_weight).to(q_logp.device)
        nll = -q_logp.gather(-1, tokens.to(q_logp.device)[..., None]).squeeze(-1)
        terms["ce"] = (nll * w).sum() / w.sum().clamp(min=1)
    if s.state_weight:
        t = target_state.to(q_state.device)
        err = ((q_state - t) ** 2).sum(-1) / (t**2).sum(-1).clamp(min=1e-12)
        terms["state"] = (err * m).sum() / n
    terms["loss"] = (
        s.kl_weight * terms["kl"]
        + s.ce_weight * terms.get("ce", 0.0)
        + s.state_weight * terms.get("state", 0.0)
    )
    return terms


def learning_rate(s: TrainSettings, step: int) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr (or constant)."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    if s.schedule == "constant":
        return s.lr
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def initial_vectors(lm, s: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    from .geometry import ordinary_token_ids, token_embeddings

    emb = token_embeddings(lm).cpu()
    if s.init == "vocab":  # random ordinary tokens (special tokens excluded)
        ordinary = ordinary_token_ids(lm)
        return emb[ordinary[torch.randint(len(ordinary), (s.length,), generator=generator)]].clone()
    if s.init == "text":
        ids = lm.tokenizer(s.init_text, add_special_tokens=False)["input_ids"]
        return emb[[ids[i % len(ids)] for i in range(s.length)]].clone()
    scale = (
        emb.norm(dim=-1).mean() / emb.shape[1] ** 0.5
    )  # normal: the mean token norm, random direction
    return torch.randn(s.length, emb.shape[1], generator=generator) * scale


# --- training -------------------------------------------------------------------------------------


def evaluate(
    lm, slot, vectors, targets: Targets, frames, positions, batch_size
) -> dict[str, float]:
    """Held-out mean KL(teacher || student) per frame."""
    return {
        f: mean_kl(
            targets,
            distributions(
                lm,
                slot,
                soft_content(vectors, f),
                targets.messages,
                targets.fed,
                positions,
                batch_size,
            )[0],
        )
        for f in frames
    }


def state_layer(lm, s: TrainSettings) -> int | None:
    """The block whose residual stream is matched (state_weight > 0), else None."""
    if not s.state_weight:
        return None
    layer = lm.num_layers // 2 if s.state_layer < 0 else s.state_layer
    if not 0 <= layer < lm.num_layers:
        raise ConfigError(
            f"training.state_layer = {s.state_layer} is out of range (the model has "
            f"{lm.num_layers} layers)"
        )
    return layer


class Distillation:
    """The distillation objective (`losses`) on the teacher's train contexts, one example per
    message; the targets go to the model's device once (`Targets.to`)."""

    def __init__(self, lm, targets: Targets, s: TrainSettings):
        self.s, self.layer = s, state_layer(lm, s)
        if self.layer is not None and targets.state is None:
            raise ValueError(
                "state matching needs the teacher's states: build the targets with that layer"
            )
        self.targets = targets.to(lm.device)

    def __len__(self) -> int:
        return len(self.targets.messages)

    def describe(self) -> dict:
        s = self.s
        return {
            "objective": "distillation",
            "kl": s.kl_weight,
            "ce": s.ce_weight,
            "state": s.state_weight,
            "state_layer": self.layer,
        }

    def __call__(self, student: Student, content, idx: list[int]) -> dict[str, torch.Tensor]:
        t = self.targets
        q_logp, q_state = student(
            content,
            [t.messages[i] for i in idx],
            [t.fed[i] for i in idx],
            self.s.positions,
            self.layer,
        )
        i = torch.tensor(idx, device=t.logp.device)
        return losses(
            self.s,
            q_logp,
            q_state,
            t.logp[i],
            None if self.layer is None else t.state[i],
            t.tokens[i],
            t.mask[i],
        )


def train(
    lm,
    slot: PromptSlot,
    objective,
    test_targets: Targets | None,
    s: TrainSettings,
    seed: int,
    checkpoint=None,
    identity: dict | None = None,
    eval_batch_size: int = 16,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """Train L soft vectors against `objective` (Distillation, or contrastive.Contrastive: called
    with the student, the slot content and a batch of example indices, it returns the loss and its
    terms); returns the vectors (float32, CPU) and the per-step curve.

    The curve has step, lr, frame, loss and the objective's other terms, seconds, and kl_test
    (held-out KL to the teacher, mean over the training frames) every `eval_every` steps and at
    the last step.
    """
    identity = {**(identity or {}), **s.describe(), **objective.describe(), "seed": seed}
    g = torch.Generator().manual_seed(seed)
    vectors = initial_vectors(lm, s, g).to(lm.device).requires_grad_(True)
    opt = torch.optim.Adam([vectors], lr=s.lr)
    start, curve = 0, []
    state = load_checkpoint(checkpoint, identity) if checkpoint else None
    if state is not None:
        with torch.no_grad():
            vectors.copy_(state["vectors"].to(vectors.device))
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        start, curve = state["step"], state["curve"]
        log.info("resumed from %s at step %d", checkpoint, start)

    student = Student(lm, slot)
    bar = tqdm(range(start, s.steps), desc="train", unit="step", initial=start, total=s.steps)
    for step in bar:
        t0 = time.perf_counter()
        idx = torch.randperm(len(objective), generator=g)[: s.batch_size].tolist()
        frame = s.frames[int(torch.randint(len(s.frames), (1,), generator=g))]
        lr = learning_rate(s, step)
        for group in opt.param_groups:
            group["lr"] = lr
        terms = objective(student, soft_content(vectors.to(lm.dtype), frame), idx)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        row = {
            "step": step + 1,
            "lr": lr,
            "frame": frame,
            **{k: float(v.detach()) for k, v in terms.items()},
            "seconds": time.perf_counter() - t0,
            "kl_test": float("nan"),
        }
        if test_targets is not None and ((step + 1) % s.eval_every == 0 or step + 1 == s.steps):
            with torch.no_grad():
                row["kl_test"] = float(
                    np.mean(
                        list(
                            evaluate(
                                lm,
                                slot,
                                vectors.detach().to(lm.dtype),
                                test_targets,
                                s.frames,
                                s.positions,
                                eval_batch_size,
                            ).values()
                        )
                    )
                )
        curve.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if checkpoint and ((step + 1) % s.checkpoint_every == 0) and step + 1 < s.steps:
            save_checkpoint(
                checkpoint,
                {
                    "identity": identity,
                    "step": step + 1,
                    "vectors": vectors.detach().cpu(),
                    "optimizer": opt.state_dict(),
                    "generator": g.get_state(),
                    "curve": curve,
                },
            )
    return vectors.detach().float().cpu(), pd.DataFrame(curve)


# --- the workflow's jobs
# ------------------------------------------------------------------------------


def run_training(*, job: ModelJob, prompt: SoftPrompt, training: dict, out, curve_out) -> None:
    """Train one soft prompt for the job's behaviour and write it (safetensors + metadata) and
    its curve (CSV)."""
    from .io import atomic_path, write_soft_prompt

    s = settings_for(training, prompt.variant)
    lm = job.lm
    if job.behavior.get("contrastive"):  # trained on the steering texts, not on the teacher
        from .contrastive import Contrastive

        c = job.behavior["contrastive"]
        objective = Contrastive(job, s, beta=c["beta"], source=c["from"])
    else:
        train_t, _ = job.targets("train", s.positions, layer=state_layer(lm, s))
        objective = Distillation(lm, train_t, s)
    test_t, test_base = job.targets("test", s.positions)
    kl_base = mean_kl(test_t, test_base.logp)
    identity = {
        "behavior": prompt.behavior,
        "variant": prompt.variant,
        "model": str(job.model),
        "slot": job.slot.position,
        "teacher_messages": len(job.teacher),
    }
    checkpoint = Path(out).with_suffix(".ckpt")
    vectors, curve = train(
        lm, job.slot, objective, test_t, s, prompt.seed, checkpoint, identity, job.batch_size
    )
    curve["kl_closure_test"] = 1 - curve["kl_test"] / kl_base
    for i, (k, v) in enumerate(prompt.labels().items()):
        curve.insert(i, k, v)
    last = curve.iloc[-1]
    write_soft_prompt(
        out,
        vectors,
        {
            **prompt.labels(),
            "model": str(job.model),
            "length": s.length,
            "hidden_size": int(vectors.shape[1]),
            "slot": job.slot.position,
            "init": s.init,
            "frames": list(s.frames),
            "objective": objective.describe(),
            "steps": s.steps,
            "settings": s.describe(),
            "final_loss": float(last["loss"]),
            "final_kl_test": float(last["kl_test"]),
            "kl_base_test": kl_base,
        },
    )
    with atomic_path(curve_out) as tmp:
        curve.to_csv(tmp, index=False)
    checkpoint.unlink(missing_ok=True)
    log.info(
        "%s/%s seed %d: held-out KL %.4f (base %.4f), closure %.3f",
        prompt.behavior,
        prompt.variant,
        prompt.seed,
        last["kl_test"],
        kl_base,
        1 - last["kl_test"] / kl_base,
    )
