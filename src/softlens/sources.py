"""Sources: what fills the slot, named by a plain spec (as the workflow passes it) and made live
here.

A source spec is a dict with a ``kind``:

- ``hard``: ``text`` as a hard prompt;  ``noisy``: ``text`` with Gaussian noise (``sigma``,
  ``seed``);
- ``soft``: a soft prompt read from ``file`` (ours, or a PEFT adapter directory), optionally
  inside a ``frame`` such as "Be ___.", optionally at its own slot ``position`` (PEFT: before the
  template); with ``random_seed`` it is the prompt's control instead: random directions with its
  vectors' norms;
- ``steered``: an empty slot with a steering vector added to the residual stream;
- ``lora``: an empty slot with a LoRA ``adapter`` (a PEFT adapter directory) switched on in the
  model's weights (softlens.lora);
- ``unprompted``: an empty slot.

Teacher generation, log-prob caches, training and evaluation all go through :func:`activate`.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from .config import behavior_source  # noqa: F401 (sources are named here; the spec lives in config)
from .slot import (
    FramedSoftPrompt,
    HardPrompt,
    NoisyHardPrompt,
    PromptSlot,
    SlotContent,
    SoftPrompt,
)


def soft_content(vectors, frame: str | None = None) -> SlotContent:
    """Soft vectors alone, or inside a frame ("___" alone means no frame)."""
    if frame is None or frame.strip() == "___":
        return SoftPrompt(vectors)
    return FramedSoftPrompt(vectors, frame)


def norm_matched_random(vectors, seed: int):
    """A control for a soft prompt: isotropic Gaussian directions, each scaled to the norm of the
    vector it replaces (the same length and norms, none of the trained directions)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    random = torch.randn(vectors.shape, generator=g, dtype=torch.float32)
    norms = vectors.float().norm(dim=-1, keepdim=True)
    return (random / random.norm(dim=-1, keepdim=True) * norms).to(vectors.dtype)


def content_for(lm, source: dict) -> SlotContent:
    kind = source["kind"]
    if kind == "hard":
        return HardPrompt(source["text"])
    if kind == "noisy":
        return NoisyHardPrompt(source["text"], source["sigma"], source["seed"])
    if kind == "soft":
        from .io import read_soft_prompt

        vectors, _ = read_soft_prompt(source["file"], lm.embeddings.weight.shape[1])
        if source.get("random_seed") is not None:
            vectors = norm_matched_random(vectors, source["random_seed"])
        return soft_content(vectors.to(lm.device, lm.dtype), source.get("frame"))
    if kind in ("unprompted", "steered", "lora"):
        return None
    raise ValueError(f"unknown source kind {kind!r}")


def slot_for(slot: PromptSlot, source: dict) -> PromptSlot:
    """The run's slot, or the same slot moved to the source's own position (an imported PEFT
    prompt)."""
    position = source.get("position")
    if position is None or position == slot.position:
        return slot
    return PromptSlot(slot.tokenizer, slot.embeddings, position, slot.separator)


@contextmanager
def activate(lm, slot: PromptSlot, source: dict, steering_file=None):
    """Yield (slot, content) for `source`, with its steering hook on the model while inside."""
    hook = nullcontext()
    if source["kind"] == "steered":
        from .io import read_vector
        from .steering import steered

        if steering_file is None:
            raise ValueError("a steered source needs its steering-vector file")
        tensors, meta = read_vector(steering_file)
        hook = steered(lm.model, tensors["direction"], meta["layer"], meta["scale"])
    elif source["kind"] == "lora":
        from .lora import lora_active

        hook = lora_active(lm, source["adapter"])
    with hook:
        yield slot_for(slot, source), content_for(lm, source)
