"""Teacher completions: what the model says with the behaviour's prompt (or steering), per user
message."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from .slot import PromptSlot, SlotContent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16


def eos_ids(lm) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    return ids | ({lm.tokenizer.eos_token_id} - {None})


@torch.no_grad()
def generate(
    lm,
    slot: PromptSlot,
    content: SlotContent,
    messages: Sequence[str],
    settings: GenerationSettings,
    steering=None,
    desc: str = "generate",
) -> list[list[int]]:
    """Completion token ids per message (left-padded batches; each cut after its first EOS, EOS
    kept).

    `steering` is a context manager (see `steering.steered`) active during generation, or None.
    """
    stops = eos_ids(lm)
    torch.manual_seed(settings.seed)  # sampling draws from the global generator; greedy ignores it
    sample = (
        {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
        if settings.do_sample
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    out: list[list[int]] = []
    bs = settings.batch_size
    with steering or nullcontext():
        for i in tqdm(range(0, len(messages), bs), desc=desc, unit="batch"):
            batch = slot.batch(content, messages[i : i + bs], padding_side="left")
            new = lm.model.generate(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=slot.pad_id,
                eos_token_id=sorted(stops),
                **sample,
            )
            for row in new.tolist():
                cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
                out.append(row[:cut])
    return out


def teacher_table(
    lm,
    slot: PromptSlot,
    content: SlotContent,
    messages: pd.DataFrame,
    behavior: str,
    settings: GenerationSettings,
    steering=None,
) -> pd.DataFrame:
    """The teacher table for one behaviour: one row per user message, train and test."""
    ids = generate(
        lm, slot, content, list(messages["user_message"]), settings, steering, desc=behavior
    )
    stops = eos_ids(lm)
    return pd.DataFrame(
        {
            "behavior": behavior,
            "split": messages["split"].to_numpy(),
            "message_id": messages["message_id"].to_numpy(),
            "user_message": messages["user_message"].to_numpy(),
            "completion": [lm.tokenizer.decode(c, skip_special_tokens=True) for c in ids],
            "completion_ids": ids,
            "n_tokens": [len(c) for c in ids],
            "finished": [bool(c) and c[-1] in stops for c in ids],
        }
    )


def run_teacher(*, job, messages: dict, generation: dict, out) -> pd.DataFrame:
    """Generate and write the teacher table of the job's behaviour (a ModelJob: instruction,
    steering, PEFT prompt or unprompted) on the configured `messages`."""
    from .config import load_messages
    from .io import write_table

    spec = job.behavior
    with job.activated() as (slot, content):
        table = teacher_table(
            job.lm,
            slot,
            content,
            load_messages(messages),
            spec["name"],
            job.generation(**generation),
        )
    log.info(
        "%s: %d completions, mean %.1f tokens, %d ended with EOS",
        spec["name"],
        len(table),
        table["n_tokens"].mean(),
        table["finished"].sum(),
    )
    write_table(
        table,
        out,
        metadata={
            "behavior": spec,
            "model": str(job.model),
            "slot": slot.position,
            "teacher": generation,
        },
    )
    return table
