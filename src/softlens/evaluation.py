"""How well a soft prompt stands in for its teacher on held-out messages.

KL closure = 1 - KL(teacher || student) / KL(teacher || unprompted), each the mean over the test
messages' first T completion positions (teacher-forced on the teacher's completions). Also the
early-weighted teacher-forced CE (seed 003) and a few greedy samples beside the teacher's.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch

from .intervals import bootstrap_ratio_interval
from .slot import PromptSlot
from .sources import soft_content
from .training import (
    BARE,
    Targets,
    distributions,
    early_weights,
    kl_terms,
    mean_kl,
    settings_for,
    teacher_and_base,
)

log = logging.getLogger(__name__)


def kl_closure(kl_student: float, kl_base: float) -> float:
    return 1.0 - kl_student / kl_base


def closure_interval(target: Targets, logp: torch.Tensor, base_logp: torch.Tensor, seed: int = 0
                     ) -> tuple[float, float]:
    """95% bootstrap interval of KL closure over the messages (each message's summed KL, student and base)."""
    m = target.mask.float()
    per = lambda q: (kl_terms(target.logp, q) * m).sum(-1).double().numpy()  # noqa: E731
    return bootstrap_ratio_interval(per(logp), per(base_logp), seed=seed)


def early_ce(targets: Targets, logp: torch.Tensor, early_tokens: int, early_weight: float) -> float:
    """Early-weighted teacher-forced cross-entropy of the teacher's tokens under `logp`."""
    w = early_weights(targets.mask, early_tokens, early_weight)
    nll = -logp.gather(-1, targets.tokens[..., None]).squeeze(-1)
    return float((nll * w).sum() / w.sum())


def exact_match(targets: Targets, logp: torch.Tensor, k: int) -> float:
    """Fraction of messages whose greedy continuation starts with the teacher's first k tokens.

    Teacher-forced argmaxes decide it exactly: the greedy continuation agrees with the teacher's for
    k tokens iff at each of those positions, fed the teacher's own prefix, the argmax is its token.
    (Completions shorter than k count over their whole length, EOS included.)
    """
    hit = (logp.argmax(-1) == targets.tokens) | ~targets.mask
    return float(hit[:, :k].all(-1).float().mean())


EXACT_K = (1, 4, 16)  # exact_match_at_{k} columns (seed 003's exact@k)


def frame_scores(lm, slot, content, target: Targets, base: Targets, positions, batch_size, s) -> dict:
    """Held-out KL closure, early-weighted CE and exact-match@k of one slot content on the test targets."""
    logp, _ = distributions(lm, slot, content, target.messages, target.fed, positions, batch_size)
    kl, kl_base = mean_kl(target, logp), mean_kl(target, base.logp)
    low, high = closure_interval(target, logp, base.logp)
    return {"kl_test": kl, "kl_base_test": kl_base, "kl_closure_test": kl_closure(kl, kl_base),
            "ci_low": low, "ci_high": high,
            "ce_test": early_ce(target, logp, s.early_tokens, s.early_weight),
            "ce_teacher_test": early_ce(target, target.logp, s.early_tokens, s.early_weight),
            "ce_base_test": early_ce(target, base.logp, s.early_tokens, s.early_weight),
            **{f"exact_match_at_{k}": exact_match(target, logp, k) for k in EXACT_K if k <= positions}}


def run_evaluation(manifest, teacher_path, prompt_path, spec: dict, variant: str, seed: int, training: dict,
                   model_settings: dict, teacher_settings: dict, out, samples_out, steering_file=None) -> pd.DataFrame:
    """Per-frame held-out scores of one soft prompt (the bare slot and every configured frame), and
    greedy samples on the first `training.samples` test messages."""
    from .io import read_soft_prompt, read_teacher, write_table
    from .models import load_model
    from .teacher import GenerationSettings, generate

    s = settings_for(training, variant)
    lm = load_model(manifest, model_settings)
    slot = PromptSlot.for_model(lm, model_settings.get("slot"))
    vectors, meta = read_soft_prompt(prompt_path, lm.embeddings.weight.shape[1])
    vectors = vectors.to(lm.device, lm.dtype)
    teacher = read_teacher(teacher_path)
    bs = model_settings.get("batch_size", 16)
    target, base = teacher_and_base(lm, slot, spec, teacher, "test", s.positions, bs, None, steering_file)
    frames = list(dict.fromkeys([BARE, *training.get("frames", [])]))
    rows = []
    for frame in frames:
        scores = frame_scores(lm, slot, soft_content(vectors, frame), target, base, s.positions, bs, s)
        rows.append({"behavior": spec["name"], "variant": variant, "seed": seed, "frame": frame,
                     "trained_frame": frame in s.frames, **scores})
    table = pd.DataFrame(rows)
    write_table(table, out, metadata={"prompt": str(prompt_path), "positions": s.positions})

    n = min(training.get("samples", 3), len(target.messages))
    test = teacher[teacher["split"] == "test"].head(n)
    gen = GenerationSettings(max_new_tokens=teacher_settings.get("max_new_tokens", 48), batch_size=bs)
    frame = s.frames[0]
    student = generate(lm, slot, soft_content(vectors, frame), list(test["user_message"]), gen, desc="samples")
    write_table(pd.DataFrame({"behavior": spec["name"], "variant": variant, "seed": seed, "frame": frame,
                              "user_message": test["user_message"].to_numpy(),
                              "teacher": test["completion"].to_numpy(),
                              "student": [lm.tokenizer.decode(c, skip_special_tokens=True) for c in student]}),
                samples_out)
    trained = table[table["trained_frame"]]
    log.info("%s/%s seed %d: held-out KL closure %.3f in its frames, %.3f bare", spec["name"], variant, seed,
             trained["kl_closure_test"].mean(), table.loc[table["frame"] == BARE, "kl_closure_test"].iloc[0])
    return table
