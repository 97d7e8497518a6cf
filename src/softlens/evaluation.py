"""How well a soft prompt stands in for its teacher on held-out messages: per-frame scores
(softlens.scoring: KL closure with its interval, early-weighted CE, exact-match@k) and a few
greedy samples beside the teacher's.
"""

from __future__ import annotations

import logging

import pandas as pd

from .config import with_defaults
from .job import ModelJob, SoftPrompt
from .scoring import frame_scores
from .sources import soft_content
from .training_settings import BARE, settings_for

log = logging.getLogger(__name__)


def run_evaluation(
    *, job: ModelJob, prompt: SoftPrompt, training: dict, max_new_tokens: int, out, samples_out
) -> pd.DataFrame:
    """Per-frame held-out scores of one soft prompt (the bare slot and every configured frame),
    and greedy samples on the first `training.samples` test messages."""
    from .io import write_table
    from .teacher import generate

    training = with_defaults(training, "training")
    s = settings_for(training, prompt.variant)
    lm = job.lm
    vectors = job.soft_prompt(prompt).to(lm.dtype)
    target, base = job.targets("test", s.positions)
    frames = list(dict.fromkeys([BARE, *training["frames"]]))
    rows = []
    for frame in frames:
        scores = frame_scores(
            lm,
            job.slot,
            soft_content(vectors, frame),
            target,
            base,
            s.positions,
            job.batch_size,
            s,
            by_message=True,  # a contrastive prompt's closure relative to another's is paired
        )
        rows.append(
            {**prompt.labels(), "frame": frame, "trained_frame": frame in s.frames, **scores}
        )
    table = pd.DataFrame(rows)
    write_table(table, out, metadata={"prompt": str(prompt.path), "positions": s.positions})

    n = min(training["samples"], len(target.messages))
    test = job.teacher[job.teacher["split"] == "test"].head(n)
    frame = s.frames[0]
    student = generate(
        lm,
        job.slot,
        soft_content(vectors, frame),
        list(test["user_message"]),
        job.generation(max_new_tokens=max_new_tokens),
        desc="samples",
    )
    write_table(
        pd.DataFrame(
            {
                **prompt.labels(),
                "frame": frame,
                "user_message": test["user_message"].to_numpy(),
                "teacher": test["completion"].to_numpy(),
                "student": [lm.tokenizer.decode(c, skip_special_tokens=True) for c in student],
            }
        ),
        samples_out,
    )
    trained = table[table["trained_frame"]]
    log.info(
        "%s/%s seed %d: held-out KL closure %.3f in its frames, %.3f bare",
        prompt.behavior,
        prompt.variant,
        prompt.seed,
        trained["kl_closure_test"].mean(),
        table.loc[table["frame"] == BARE, "kl_closure_test"].iloc[0],
    )
    return table
