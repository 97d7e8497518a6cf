"""Next-token log-prob caches: one source (slot content) scored on a behaviour's teacher contexts.

A context is (user message, teacher completion prefix y_<t) for t < T. Every source is scored on the
same contexts, so cache rows align by (message_id, position) across sources.

Speed: the text before the slot and the slot itself are the same for every message, so their KV cache
is computed once per source and shared by the batch ("inner" padding); logits are computed only at
the T scored positions.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .slot import PromptSlot, SlotContent

log = logging.getLogger(__name__)

KEY = ["message_id", "position"]


@torch.no_grad()
def score(lm, slot: PromptSlot, content: SlotContent, messages: Sequence[str],
          completions: Sequence[Sequence[int]], positions: int, batch_size: int = 16,
          desc: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """Log-probs (R, V) float32 at the first `positions` completion positions of every message.

    Returns (logprobs, rows) where rows[r] = (message index, position). Position t is the
    distribution of completion token t given the message and y_<t (t < len(completion)).
    """
    # Completion tokens after T-1 are never inputs to a scored position; pad to a common length.
    fed = [list(c[:positions - 1]) + [slot.pad_id] * (positions - 1 - len(c[:positions - 1])) for c in completions]
    out, rows, prefix = [], [], None
    for i in tqdm(range(0, len(messages), batch_size), desc=desc, unit="batch", leave=False):
        batch = slot.batch(content, messages[i:i + batch_size], fed[i:i + batch_size], padding_side="inner")
        P, B = batch.prefix_len, batch.inputs_embeds.shape[0]
        if prefix is None:  # the shared prefix's KV cache, once per source
            prefix = lm.model(inputs_embeds=batch.inputs_embeds[:1, :P], use_cache=True).past_key_values
        cache = copy.deepcopy(prefix)
        cache.batch_repeat_interleave(B)
        logits = lm.model(inputs_embeds=batch.inputs_embeds[:, P:], attention_mask=batch.attention_mask,
                          position_ids=batch.position_ids[:, P:], past_key_values=cache, use_cache=True,
                          logits_to_keep=positions).logits
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V); row-end aligned = scored positions
        for b in range(B):
            n = min(positions, len(completions[i + b]))
            out.append(logp[b, :n].cpu())
            rows += [(i + b, t) for t in range(n)]
    return torch.cat(out).numpy(), np.array(rows, dtype=np.int64).reshape(-1, 2)


def content_for(source: dict):
    """Slot content for a source spec: hard text, noisy hard text, or nothing."""
    from .slot import HardPrompt, NoisyHardPrompt

    if source["kind"] == "hard":
        return HardPrompt(source["text"])
    if source["kind"] == "noisy":
        return NoisyHardPrompt(source["text"], source["sigma"], source["seed"])
    if source["kind"] in ("unprompted", "steered"):
        return None
    raise ValueError(f"unknown source kind {source['kind']!r}")


def run_sources(manifest, teacher_path, sources: dict[str, dict], outputs: dict[str, str], model_settings: dict,
                positions: int, dtype: str, steering_file=None) -> None:
    """Score each named source on the behaviour's teacher contexts and write one cache per source."""
    from contextlib import nullcontext

    from .io import read_teacher, read_vector, write_logprobs
    from .models import load_model
    from .steering import steered

    lm = load_model(manifest, model_settings)
    slot = PromptSlot.for_model(lm, model_settings.get("slot"))
    teacher = read_teacher(teacher_path)
    messages, completions = list(teacher["user_message"]), [list(c) for c in teacher["completion_ids"]]
    for name, source in tqdm(sources.items(), desc="sources", unit="source"):
        hook = nullcontext()
        if source["kind"] == "steered":
            tensors, meta = read_vector(steering_file)
            hook = steered(lm.model, tensors["direction"], meta["layer"], meta["scale"])
        with hook:
            logp, rows = score(lm, slot, content_for(source), messages, completions, positions,
                               model_settings.get("batch_size", 16), desc=name)
        write_logprobs(outputs[name], teacher, logp, rows, dtype,
                       metadata={"source": name, "spec": source, "behavior": str(teacher["behavior"].iloc[0]),
                                 "positions": positions, "slot": slot.position})
