"""The prompt slot: one place that turns (slot content, user message, completion) into model
inputs.

A sequence is  [text before the slot] [slot] [text after the slot, containing the user message
and the assistant header] [completion].  The slot holds a hard prompt, a soft prompt (L x d), a
hard prompt with Gaussian noise on its embeddings, a soft prompt inside a text frame ("Be ___."),
a hard prompt given as token ids (a projection, a searched prompt), or nothing (the unprompted
model). Where it sits is a per-model setting:

- ``system``: the slot is the system turn's content;
- ``user_start``: the slot opens the user turn, then ``separator``, then the message;
- ``before_template``: the slot precedes the whole templated input (where PEFT prompt tuning puts
  its virtual tokens).

Teacher generation, training, log-prob caching, projection repair and verbalisation all build
their inputs here, so a placement change is one edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from .config import FRAME_PLACEHOLDER, ConfigError

POSITIONS = ("system", "user_start", "before_template")
_SENTINEL = "\u2063SLOT\u2063"  # invisible separator: never produced by a tokenizer round trip


# --- what the slot can hold -----------------------------------------------------------------------


@dataclass(frozen=True)
class HardPrompt:
    text: str


@dataclass(frozen=True, eq=False)
class SoftPrompt:
    vectors: torch.Tensor  # (L, d), in the model's input-embedding space


@dataclass(frozen=True)
class NoisyHardPrompt:
    """A hard prompt whose slot embeddings get fixed Gaussian noise.

    Each noise vector has expected norm ``sigma`` times the mean token-embedding norm, so sigma=1
    moves every token about as far as a typical token is from the origin.
    """

    text: str
    sigma: float
    seed: int


@dataclass(frozen=True, eq=False)
class FramedSoftPrompt:
    """A soft prompt inside a text frame such as "Be ___." (the placeholder is ``___``)."""

    vectors: torch.Tensor
    frame: str

    def __post_init__(self):
        if self.frame.count(FRAME_PLACEHOLDER) != 1:
            raise ConfigError(
                f"frame {self.frame!r} must contain the placeholder {FRAME_PLACEHOLDER!r} exactly "
                "once"
            )


@dataclass(frozen=True)
class TokenPrompt:
    """A hard prompt given as token ids, optionally inside a frame: a projected or searched
    prompt, scored exactly as found (its decoded text need not tokenize back to the same ids)."""

    ids: tuple
    frame: str | None = None


SlotContent = HardPrompt | SoftPrompt | NoisyHardPrompt | FramedSoftPrompt | TokenPrompt | None


# --- batches --------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Model inputs for B sequences plus where the slot and the completion sit in them."""

    inputs_embeds: torch.Tensor  # (B, T, d)
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    position_ids: torch.Tensor  # (B, T) counted over real tokens only (correct under left padding)
    token_ids: torch.Tensor  # (B, T) token ids; pad id at padding and at soft positions
    soft_mask: torch.Tensor  # (B, T) True where the input is a soft vector
    slot_mask: torch.Tensor  # (B, T) True at every slot position (frame text included)
    completion_start: torch.Tensor  # (B,) position of the first completion token
    completion_len: torch.Tensor  # (B,)
    prefix_len: int = 0  # "inner" padding: positions [0, prefix_len) are the same in every row
    slot_start: int = 0  # "inner" padding: where the slot starts (the text before it is shared)

    def model_inputs(self) -> dict:
        return {
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }

    def scored_positions(
        self, max_positions: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T') indices whose next-token distributions predict completion tokens 0..T'-1, and
        a mask.

        The logits at position ``completion_start - 1 + t`` predict completion token t.
        """
        n = int(self.completion_len.max()) if max_positions is None else max_positions
        t = torch.arange(n, device=self.completion_start.device)
        idx = (self.completion_start[:, None] - 1 + t).clamp(max=self.inputs_embeds.shape[1] - 1)
        return idx, t[None, :] < self.completion_len[:, None]


class PromptSlot:
    """Renders chat-formatted sequences with a slot for one model's tokenizer and embeddings."""

    def __init__(
        self,
        tokenizer,
        embeddings: torch.nn.Module,
        position: str = "user_start",
        separator: str = " ",
    ):
        if position not in POSITIONS:
            raise ConfigError(
                f"model_settings.slot.position = {position!r}: expected one of {POSITIONS}"
            )
        self.tokenizer = tokenizer
        self.embeddings = embeddings
        self.position = position
        self.separator = separator
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )

    @classmethod
    def for_model(cls, lm, slot_settings: dict | None = None) -> PromptSlot:
        from .config import with_defaults

        s = with_defaults(slot_settings, "model_settings.slot")
        return cls(lm.tokenizer, lm.embeddings, s["position"], s["separator"])

    # -- text ----------------------------------------------------------------------------------

    def _render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )

    def texts(self, message: str, has_slot: bool) -> tuple[str, str]:
        """The text before the slot and the text after it (which contains the message)."""
        if not has_slot or self.position in ("before_template", "user_start"):
            sep = self.separator if has_slot and self.position == "user_start" else ""
            rendered = self._render([{"role": "user", "content": _SENTINEL + sep + message}])
        else:  # system
            rendered = self._render(
                [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": message}]
            )
        if rendered.count(_SENTINEL) != 1:
            raise ValueError(
                f"the chat template dropped or repeated the slot (position {self.position!r})"
            )
        before, after = rendered.split(_SENTINEL)
        if has_slot and self.position == "before_template":
            return "", before + after
        return before, after

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # -- slot content --------------------------------------------------------------------------

    @cached_property
    def mean_token_norm(self) -> float:
        """Mean L2 norm of the token embeddings: the unit in which noise sigma is measured."""
        return float(self.embeddings.weight.detach().float().norm(dim=-1).mean())

    def content_parts(self, content: SlotContent) -> list[list[int] | torch.Tensor]:
        """The slot as consecutive parts: token-id lists and (L, d) tensors of vectors."""
        if content is None:
            return []
        if isinstance(content, HardPrompt):
            return [self.tokenize(content.text)]
        if isinstance(content, SoftPrompt):
            return [self._check_vectors(content.vectors)]
        if isinstance(content, NoisyHardPrompt):
            ids = self.tokenize(content.text)
            clean = self.embeddings(torch.tensor(ids, device=self.embeddings.weight.device))
            g = torch.Generator().manual_seed(content.seed)
            eps = torch.randn(clean.shape, generator=g, dtype=torch.float32).to(
                clean.device, clean.dtype
            )
            scale = content.sigma * self.mean_token_norm / clean.shape[-1] ** 0.5
            return [clean + scale * eps]
        if isinstance(content, (FramedSoftPrompt, TokenPrompt)):
            inner = (
                self._check_vectors(content.vectors)
                if isinstance(content, FramedSoftPrompt)
                else list(content.ids)
            )
            if content.frame is None or content.frame.strip() == FRAME_PLACEHOLDER:
                return [inner]
            left, right = content.frame.split(FRAME_PLACEHOLDER)
            # The slot's content stands where a word would, and a word carries its own leading
            # space.
            return [self.tokenize(left.rstrip()), inner, self.tokenize(right)]
        raise TypeError(f"unsupported slot content {type(content).__name__}")

    def _check_vectors(self, v: torch.Tensor) -> torch.Tensor:
        d = self.embeddings.weight.shape[1]
        if v.ndim != 2 or v.shape[1] != d:
            raise ValueError(f"soft prompt has shape {tuple(v.shape)}; this model needs (L, {d})")
        return v

    # -- batches -------------------------------------------------------------------------------

    def batch(
        self,
        content: SlotContent,
        messages: Sequence[str],
        completions: Sequence[Sequence[int]] | None = None,
        padding_side: str = "right",
    ) -> Batch:
        """Inputs for every message with the same slot content (and teacher-forced completions).

        padding_side: "right" (scoring), "left" (generation), or "inner": the text before the
        slot and the slot itself (identical in every row) come first, then the padding, then the
        rest, so one KV cache of that shared prefix serves the whole batch and the sequences end
        together.
        """
        completions = completions if completions is not None else [[] for _ in messages]
        if len(completions) != len(messages):
            raise ValueError(f"{len(messages)} messages but {len(completions)} completions")
        parts = self.content_parts(content)
        device = self.embeddings.weight.device
        # per sequence: token ids (pad at soft positions), soft spans, slot span, completion
        rows = []
        for message, completion in zip(messages, completions):
            before, after = self.texts(message, content is not None)
            ids, soft = self.tokenize(before), []
            slot_start = len(ids)
            for part in parts:
                if isinstance(part, torch.Tensor):
                    soft.append((len(ids), part))
                    ids += [self.pad_id] * part.shape[0]
                else:
                    ids += part
            slot_end = len(ids)
            ids += self.tokenize(after)
            start = len(ids)
            ids += list(completion)
            rows.append((ids, soft, slot_start, slot_end, start, len(completion)))

        B, T = len(rows), max(len(r[0]) for r in rows)
        if padding_side == "inner" and any(r[0][: r[3]] != rows[0][0][: rows[0][3]] for r in rows):
            raise ValueError(
                "inner padding needs the same text before and in the slot in every row"
            )
        token_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attention = torch.zeros(B, T, dtype=torch.long)
        slot_mask = torch.zeros(B, T, dtype=torch.bool)
        soft_mask = torch.zeros(B, T, dtype=torch.bool)
        starts, lens, soft_index, soft_values = [], [], [], []
        for b, (ids, soft, s0, s1, start, n) in enumerate(rows):
            off = T - len(ids) if padding_side in ("left", "inner") else 0
            if padding_side == "inner":  # move the shared prefix in front of the padding
                ids, off_prefix = ids[:s1] + [self.pad_id] * off + ids[s1:], 0
                attention[b] = 1
                attention[b, s1 : s1 + off] = 0
                token_ids[b] = torch.tensor(ids)
            else:
                off_prefix = off
                token_ids[b, off : off + len(ids)] = torch.tensor(ids)
                attention[b, off : off + len(ids)] = 1
            slot_mask[b, off_prefix + s0 : off_prefix + s1] = True
            for at, vec in soft:
                soft_mask[b, off_prefix + at : off_prefix + at + vec.shape[0]] = True
                soft_index.append(
                    torch.stack(
                        [
                            torch.full((vec.shape[0],), b),
                            off_prefix + at + torch.arange(vec.shape[0]),
                        ],
                        1,
                    )
                )
                soft_values.append(vec)
            starts.append(off + start)
            lens.append(n)

        token_ids, attention = token_ids.to(device), attention.to(device)
        embeds = self.embeddings(token_ids)
        if soft_values:  # out-of-place so gradients reach the soft vectors
            idx = torch.cat(soft_index).to(device)
            embeds = embeds.index_put(
                (idx[:, 0], idx[:, 1]), torch.cat(soft_values).to(embeds.device, embeds.dtype)
            )
        return Batch(
            inputs_embeds=embeds,
            attention_mask=attention,
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
            token_ids=token_ids,
            soft_mask=soft_mask.to(device),
            slot_mask=slot_mask.to(device),
            completion_start=torch.tensor(starts, device=device),
            completion_len=torch.tensor(lens, device=device),
            prefix_len=rows[0][3] if padding_side == "inner" else 0,
            slot_start=rows[0][2] if padding_side == "inner" else 0,
        )
