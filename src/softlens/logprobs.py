"""Next-token log-prob caches: one source (slot content) scored on a behaviour's teacher
contexts.

A cache holds each context's distribution in factored form (softlens.head): the output head's
input and the log-normaliser, from which every log-prob is one dot product.

A context is (user message, teacher completion prefix y_<t) for t < T. Every source is scored on
the same contexts, so cache rows align by (message_id, position) across sources.

Speed: the text before the slot and the slot itself are the same for every message, so their KV
cache is computed once per source and shared by the batch ("inner" padding); the text before the
slot is also the same for every source, so a caller scoring many (SharedPrefix) reads it once; a
cache is the decoder's alone, and logits are computed only at the T scored positions.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .head import OutputHead
from .slot import PromptSlot, SlotContent

log = logging.getLogger(__name__)

KEY = ["message_id", "position"]


@functools.cache
def _cache_keyword(decoder_class: type) -> str:
    """The KV cache's keyword, in and out of a forward: transformers 5 renamed `past_key_values`
    to `cache`, and the old name, which only warns now, is to be removed (in 5.40); a model that
    ignored it would silently drop the prefix and score every context without it."""
    names = inspect.signature(decoder_class.forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def cache_keyword(lm) -> str:
    return _cache_keyword(type(lm.model.get_decoder()))


@torch.no_grad()
def decoder_cache(lm, embeds: torch.Tensor, past=None, start: int = 0):
    """KV cache of the decoder after reading `embeds` (1, n, d) at positions start.., continuing a
    copy of `past` (the cache of [0, start)). The decoder alone runs: a cache needs no logits."""
    positions = torch.arange(start, start + embeds.shape[1], device=embeds.device)[None]
    key = cache_keyword(lm)
    out = lm.model.get_decoder()(
        inputs_embeds=embeds.detach(),
        position_ids=positions,
        use_cache=True,
        **{key: copy.deepcopy(past) if past is not None else None},
    )
    return out[key]


def prefix_cache(lm, batch):
    """KV cache of the text before the slot (the same in every row of an "inner"-padded batch)."""
    if batch.slot_start == 0:
        return None
    return decoder_cache(lm, batch.inputs_embeds[:1, : batch.slot_start])


class SharedPrefix:
    """KV caches of the text before and in the slot for many contents scored under the same model
    state (no hook or adapter changes in between; e.g. every candidate text as a hard prompt):
    the text before the slot is the same for all of them, so it is read once and each content's
    cache continues it. A different text before the slot is read afresh."""

    def __init__(self, lm):
        self.lm, self.ids, self.before = lm, None, None

    def __call__(self, batch):
        S, P = batch.slot_start, batch.prefix_len
        ids = tuple(batch.token_ids[0, :S].tolist())
        if S and ids != self.ids:
            self.ids, self.before = ids, prefix_cache(self.lm, batch)
        if S == P:  # an empty slot: the text before it is the whole prefix
            return self.before
        return decoder_cache(
            self.lm, batch.inputs_embeds[:1, S:P], past=self.before if S else None, start=S
        )


def _with_prefix(lm, batch, prefix, start: int) -> dict:
    """Model kwargs that continue every row of the batch from the shared KV cache of [0, start)."""
    if not start:
        return {}
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(batch.inputs_embeds.shape[0])
    return {cache_keyword(lm): cache, "use_cache": True}


def forward_scored(
    lm, batch, positions: int, prefix=None, start: int = 0, layer: int | None = None
):
    """Log-probs (B, T, V) float32 at the last `positions` positions of an "inner"-padded batch
    (row-end aligned, so these are the scored positions), reusing `prefix` = KV cache of [0,
    start).

    With `layer`, also the residual stream after decoder block `layer` there, (B, T, d).
    Gradients flow to whatever the batch's embeddings depend on (a soft prompt being trained).
    """
    from .steering import _hidden, decoder_layers

    kwargs = _with_prefix(lm, batch, prefix, start)
    captured = []
    handle = (
        None
        if layer is None
        else decoder_layers(lm.model)[layer].register_forward_hook(
            lambda m, i, o: captured.append(_hidden(o)[:, -positions:])
        )
    )
    try:
        logits = lm.model(
            inputs_embeds=batch.inputs_embeds[:, start:],
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids[:, start:],
            logits_to_keep=positions,
            **kwargs,
        ).logits
    finally:
        if handle is not None:
            handle.remove()
    return torch.log_softmax(logits.float(), dim=-1), (captured[0].float() if captured else None)


class Student:
    """The frozen model with some content in its slot, scored at the last T positions of
    teacher-forced contexts. The text before the slot is the same in every row: it is encoded once
    and its KV cache reused by every call."""

    def __init__(self, lm, slot):
        self.lm, self.slot, self.prefix = lm, slot, None

    def __call__(self, content, messages, fed, positions: int, layer: int | None = None):
        batch = self.slot.batch(content, messages, fed, padding_side="inner")
        if self.prefix is None:
            self.prefix = prefix_cache(self.lm, batch)
        return forward_scored(self.lm, batch, positions, self.prefix, batch.slot_start, layer)


def length_batches(slot: PromptSlot, messages: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """Message indices in batches of similar length, shortest first (a stable order, so the
    same messages always batch alike): a batch pads every row to its longest, and in file order
    the default's messages fed 1.24x the tokens after the shared prefix that they feed sorted
    (benchmarks/length_batches.py)."""
    order = np.argsort([len(slot.tokenize(m)) for m in messages], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def fed_completions(
    completions: Sequence[Sequence[int]], positions: int, pad_id: int
) -> list[list[int]]:
    """Completion tokens fed as inputs: the first T-1, padded to T-1 so scored positions end
    every row."""
    return [
        list(c[: positions - 1]) + [pad_id] * (positions - 1 - len(c[: positions - 1]))
        for c in completions
    ]


def forward_states(lm, batch, positions: int, prefix=None, start: int = 0) -> torch.Tensor:
    """The output head's input (B, T, d) float32 at the last `positions` positions of an
    "inner"-padded batch: the states a factored cache stores (softlens.head). The decoder alone
    runs: a cache needs no logits (their (B, T, V) product was a fifth of a scoring job)."""
    kwargs = _with_prefix(lm, batch, prefix, start)
    hidden = lm.model.get_decoder()(
        inputs_embeds=batch.inputs_embeds[:, start:],
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids[:, start:],
        **kwargs,
    ).last_hidden_state
    return hidden[:, -positions:].float()


@torch.no_grad()
def score(
    lm,
    slot: PromptSlot,
    content: SlotContent,
    messages: Sequence[str],
    completions: Sequence[Sequence[int]],
    positions: int,
    batch_size: int = 16,
    desc: str | None = "score",
    head: OutputHead | None = None,
    prefixes: SharedPrefix | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factored next-token distributions at the first `positions` completion positions of every
    message.

    Returns (states (R, d) float32, lse (R,) float64, rows) where rows[r] = (message index,
    position) and log p(v) = states[r] . W_v + b_v - lse[r] for the model's output head
    (softlens.head). Position t is the distribution of completion token t given the message and
    y_<t (t < len(completion)). `desc=None` hides the progress bar (a caller scoring many sources
    shows its own). `prefixes` shares the text before the slot with the caller's other contents.
    """
    head = head or OutputHead.from_model(lm.model)
    prefixes = prefixes or SharedPrefix(lm)
    fed = fed_completions(completions, positions, slot.pad_id)
    out, prefix = [None] * len(messages), None
    for idx in tqdm(
        length_batches(slot, messages, batch_size),
        desc=desc,
        unit="batch",
        leave=False,
        disable=desc is None,
    ):
        batch = slot.batch(
            content, [messages[i] for i in idx], [fed[i] for i in idx], padding_side="inner"
        )
        if prefix is None:  # the shared prefix (text before and in the slot), once per source
            prefix = prefixes(batch) if batch.prefix_len else False
        x = forward_states(lm, batch, positions, prefix, batch.prefix_len if prefix else 0).cpu()
        for b, i in enumerate(idx):
            out[i] = x[b, : min(positions, len(completions[i]))]
    rows = [(i, t) for i, x in enumerate(out) for t in range(x.shape[0])]
    states = torch.cat(out)
    return states.numpy(), head.lse(states).numpy(), np.array(rows, dtype=np.int64).reshape(-1, 2)


def run_sources(*, job, sources: dict[str, dict], outputs: dict[str, str], positions: int) -> None:
    """Score each named source on the job's teacher contexts (a ModelJob) and write one cache per
    source."""
    from .io import write_states

    head = OutputHead.from_model(job.lm.model)
    teacher = job.teacher
    messages, completions = (
        list(teacher["user_message"]),
        [list(c) for c in teacher["completion_ids"]],
    )
    for name, source in tqdm(sources.items(), desc="sources", unit="source"):
        with job.activated(source) as (slot, content):
            states, lse, rows = score(
                job.lm,
                slot,
                content,
                messages,
                completions,
                positions,
                job.batch_size,
                desc=name,
                head=head,
            )
        write_states(
            outputs[name],
            teacher,
            states,
            lse,
            rows,
            metadata={
                "source": name,
                "spec": source,
                "behavior": str(teacher["behavior"].iloc[0]),
                "positions": positions,
                "slot": slot.position,
            },
        )


def run_head(*, model, settings: dict, out) -> None:
    """Write the model's output head (the decoder every factored cache is read with), in float32."""
    from .head import save_head
    from .models import load_model

    lm = load_model(model, {**settings, "device": "cpu", "dtype": "float32"})
    save_head(OutputHead.from_model(lm.model), out, {"model": str(model)})
