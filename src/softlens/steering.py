"""Steering-vector teachers: a direction in the residual stream, added at one layer.

"Layer l" means the output of decoder block l (0-based), i.e. the residual stream after block l.
The direction is read and added at that same place, through forward hooks on the block.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from .config import ConfigError


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks (Llama, Qwen, Gemma, ... all keep one ModuleList)."""
    n = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def captured(model: torch.nn.Module, layers: Sequence[int]):
    """Record every forward output of the given decoder blocks: {layer: [tensor per call]}."""
    blocks = decoder_layers(model)
    bad = [l for l in layers if not 0 <= l < len(blocks)]
    if bad:
        raise ValueError(
            f"layers {bad} out of range: the model has {len(blocks)} decoder layers (0-based)"
        )
    record: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    handles = [
        blocks[l].register_forward_hook(
            lambda m, i, o, l=l: record[l].append(_hidden(o).detach().float().cpu())
        )
        for l in layers
    ]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def mean_activation(lm, texts: Sequence[str], layer: int, batch_size: int = 16) -> torch.Tensor:
    """Mean over texts of the token-averaged residual stream after block `layer` (float32, (d,)).

    Texts are tokenized raw (no chat template), right-padded; each text's first token is left
    out.
    """
    layers = decoder_layers(lm.model)
    if not 0 <= layer < len(layers):
        raise ConfigError(
            f"steering layer {layer} is out of range: the model has {len(layers)} layers"
        )
    short = [t for t in texts if len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) < 2]
    if short:  # its only token is the one left out: it would average nothing (a NaN direction)
        raise ConfigError(
            f"steering texts {short} have fewer than 2 tokens (each text's first token is left "
            f"out); use longer texts"
        )
    total, count = torch.zeros(lm.model.config.get_text_config().hidden_size), 0
    with captured(lm.model, [layer]) as record:
        for i in range(0, len(texts), batch_size):
            enc = lm.tokenizer(
                list(texts[i : i + batch_size]),
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(lm.device)
            record[layer].clear()
            lm.model(**enc)
            h, mask = record[layer][0], enc["attention_mask"].unsqueeze(-1).float().cpu().clone()
            # Skip each text's first token: the attention sink carries huge, content-free
            # activations.
            mask[torch.arange(len(mask)), mask.squeeze(-1).argmax(1)] = 0
            total += ((h * mask).sum(1) / mask.sum(1)).sum(0)
            count += h.shape[0]
    return total / count


def steering_direction(
    lm, positive: Sequence[str], negative: Sequence[str], layer: int
) -> torch.Tensor:
    """Mean-difference direction (positive minus negative) at `layer`."""
    return mean_activation(lm, positive, layer) - mean_activation(lm, negative, layer)


@contextmanager
def steered(model: torch.nn.Module, direction: torch.Tensor, layer: int, scale: float):
    """Within the block, add ``scale * direction`` to the residual stream after `layer` at every
    position."""
    block = decoder_layers(model)[layer]
    param = next(model.parameters())
    delta = (scale * direction).to(param.device, param.dtype)
    handle = block.register_forward_hook(lambda m, i, o: _replace_hidden(o, _hidden(o) + delta))
    try:
        yield
    finally:
        handle.remove()


def compute_steering_vector(*, job, out) -> None:
    """The direction of the job's steering behaviour (a ModelJob), written with its layer and
    scale."""
    from .config import check_steering_layers
    from .io import write_vector

    spec, lm = job.behavior, job.lm
    check_steering_layers([spec], lm.num_layers)
    s = spec["steering"]
    direction = steering_direction(lm, s["positive"], s["negative"], s["layer"])
    write_vector(
        {"direction": direction},
        out,
        {
            "behavior": spec["name"],
            "layer": s["layer"],
            "scale": s["scale"],
            "norm": float(direction.norm()),
        },
    )
