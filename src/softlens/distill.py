"""A teacher made of weights with a known answer: an instruction distilled into a LoRA.

The LoRA is trained so that the model with the adapter and an *empty* slot matches the hard-prompt
teacher (the same model with the instruction in the slot): KL(teacher || student) over the full
next-token distributions at the first T positions of the teacher's own completions
(teacher-forced), on the train messages. The behaviour then lives in the weights only; a soft
prompt trained against this LoRA, decomposed and read, should give the instruction back (the round
trip of issue 20). The adapter's own closure to the hard-prompt teacher is scored once on the test
messages, with its bootstrap interval. The trainer's state (the LoRA's weights, Adam's moments, the
batch generator) is checkpointed, so a killed job resumes and ends as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .checkpoints import load_checkpoint, save_checkpoint
from .logprobs import forward_scored
from .scoring import closure_interval, distributions, masked_kl, mean_kl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    rank: int = 4
    steps: int = 60
    lr: float = 0.002
    batch_size: int = 8
    positions: int = 32
    alpha_per_rank: float = 2.0
    target_modules: tuple = field(default=("q_proj", "k_proj", "v_proj", "o_proj"))
    seed: int = 0
    checkpoint_every: int = 10


def distill_lora(*, job, settings: DistillSettings, out_dir) -> pd.DataFrame:
    """Train the LoRA against the job's hard-prompt teacher (a ModelJob whose behaviour is the
    instruction), write it as a PEFT adapter in `out_dir` (atomically), and return its curve with
    the test closure in the last row's `kl_closure_test`, `ci_low`, `ci_high`. A checkpoint beside
    `out_dir` is resumed from (when the same settings and model wrote it) and removed at the end.
    """
    from peft import LoraConfig, get_peft_model

    s, lm, out_dir = settings, job.lm, Path(out_dir)
    train_t, _ = job.targets("train", s.positions)
    test_t, test_base = job.targets("test", s.positions)
    train_t = train_t.to(lm.device)
    config = LoraConfig(
        r=s.rank,
        lora_alpha=s.alpha_per_rank * s.rank,
        target_modules=list(s.target_modules),
        lora_dropout=0.0,
    )
    torch.manual_seed(s.seed)  # PEFT draws lora_A from torch's global generator
    student = get_peft_model(lm.model, config)
    try:
        named = [(name, p) for name, p in student.named_parameters() if "lora_" in name]
        for _, p in named:
            p.requires_grad_(True)
        params = [p for _, p in named]
        opt = torch.optim.Adam(params, lr=s.lr)
        g = torch.Generator().manual_seed(s.seed)
        checkpoint = out_dir.with_name(out_dir.name + ".ckpt")
        identity = {
            **{k: v for k, v in asdict(s).items() if k != "checkpoint_every"},
            "target_modules": list(s.target_modules),
            "model": str(lm.path),
            "instruction": job.behavior.get("instruction"),
            "train_messages": len(train_t.messages),
        }
        start, curve = 0, []
        state = load_checkpoint(checkpoint, identity)
        if state is not None:
            with torch.no_grad():
                for name, p in named:
                    p.copy_(state["lora"][name].to(p.device, p.dtype))
            opt.load_state_dict(state["optimizer"])
            g.set_state(state["generator"])
            start, curve = state["step"], state["curve"]
            log.info("resumed from %s at step %d", checkpoint, start)
        n = len(train_t.messages)
        for step in range(start, s.steps):
            t0 = time.perf_counter()
            idx = torch.randperm(n, generator=g)[: s.batch_size].tolist()
            batch = job.slot.batch(
                None,
                [train_t.messages[i] for i in idx],
                [train_t.fed[i] for i in idx],
                padding_side="inner",
            )
            # no prefix cache: the text before the slot is encoded by the weights being trained
            q_logp, _ = forward_scored(lm, batch, s.positions)
            rows = torch.tensor(idx, device=lm.device)
            kl = masked_kl(train_t.logp[rows], q_logp, train_t.mask[rows])
            opt.zero_grad(set_to_none=True)
            kl.backward()
            opt.step()
            curve.append(
                {"step": step + 1, "kl": float(kl.detach()), "seconds": time.perf_counter() - t0}
            )
            if (step + 1) % s.checkpoint_every == 0 and step + 1 < s.steps:
                save_checkpoint(
                    checkpoint,
                    {
                        "identity": identity,
                        "step": step + 1,
                        "lora": {name: p.detach().cpu() for name, p in named},
                        "optimizer": opt.state_dict(),
                        "generator": g.get_state(),
                        "curve": curve,
                    },
                )
        with torch.no_grad():
            logp, _ = distributions(
                lm, job.slot, None, test_t.messages, test_t.fed, s.positions, job.batch_size
            )
        kl_test, kl_base = mean_kl(test_t, logp), mean_kl(test_t, test_base.logp)
        low, high = closure_interval(test_t, logp, test_base.logp)
        curve[-1].update(
            kl_test=kl_test,
            kl_base_test=kl_base,
            kl_closure_test=1 - kl_test / kl_base,
            ci_low=low,
            ci_high=high,
        )
        for p in params:
            p.requires_grad_(False)
        student.peft_config["default"].base_model_name_or_path = str(lm.path)
        _save_adapter(student, out_dir)
        checkpoint.unlink(missing_ok=True)
    finally:
        student.unload()  # the job's model is the base model again
    log.info(
        "LoRA rank %d: closure to the hard-prompt teacher %.3f [%.3f, %.3f] after %d steps",
        s.rank,
        1 - kl_test / kl_base,
        low,
        high,
        s.steps,
    )
    return pd.DataFrame(curve).assign(rank=s.rank, settings=str(asdict(s)))


def _save_adapter(peft_model, out_dir: Path) -> None:
    """PEFT's adapter directory, written beside and moved into place file by file."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    peft_model.save_pretrained(partial)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(partial.iterdir(), key=lambda f: f.suffix == ".safetensors"):
        os.replace(f, out_dir / f.name)  # the weights last: the rule's declared output
    partial.rmdir()
