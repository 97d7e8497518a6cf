"""What one soft prompt's training depends on: its settings from the config's `training` block.

Kept apart from softlens.training (and free of torch) because the workflow reads them when it
builds the DAG: the training rule's params are these settings, so a change in any of them
retrains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .config import FRAME_PLACEHOLDER, ConfigError, settings, with_defaults

BARE = FRAME_PLACEHOLDER  # the frame that is no frame: the vectors alone in the slot
VARIANTS = ("prepend", "contextualised")


@dataclass(frozen=True)
class TrainSettings:
    length: int = 8  # L, soft vectors
    init: str = "vocab"  # vocab (random vocabulary tokens) | text | normal
    init_text: str = ""  # for init "text": its tokens, cycled to length L
    steps: int = 100
    batch_size: int = 8
    lr: float = 3e-2
    warmup: int = 5
    schedule: str = "cosine"  # cosine (to min_lr_ratio * lr) | constant, after warmup
    min_lr_ratio: float = 0.1
    positions: int = 32  # T, scored completion positions per message
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    early_tokens: int = 32
    early_weight: float = 3.0
    state_weight: float = 0.0
    state_layer: int = -1  # decoder block; -1 = the middle one
    eval_every: int = 20
    checkpoint_every: int = 10
    frames: tuple = field(default=(BARE,))  # prepend: the bare slot only

    def __post_init__(self):
        if self.length < 1:
            raise ConfigError(f"training.length = {self.length}: need at least one soft vector")
        if self.init not in ("vocab", "text", "normal"):
            raise ConfigError(f"training.init = {self.init!r}: expected vocab, text or normal")
        if self.init == "text" and not self.init_text.strip():
            raise ConfigError("training.init = 'text' needs a non-empty training.init_text")
        if not self.frames:
            raise ConfigError("training.frames is empty")
        for f in self.frames:
            if f.count(FRAME_PLACEHOLDER) != 1:
                raise ConfigError(
                    f"training.frames: {f!r} must contain the placeholder {FRAME_PLACEHOLDER!r} "
                    "once"
                )
        if self.kl_weight == self.ce_weight == self.state_weight == 0:
            raise ConfigError(
                "training: kl_weight, ce_weight and state_weight are all 0 (nothing to train)"
            )

    def describe(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def settings_for(training: dict, variant: str) -> TrainSettings:
    """TrainSettings for a variant from the config's `training` block."""
    if variant not in VARIANTS:
        raise ConfigError(f"training variant {variant!r}: expected one of {VARIANTS}")
    frames = (
        with_defaults(training, "training")["frames"] if variant == "contextualised" else [BARE]
    )
    return settings(TrainSettings, "training", training, frames=tuple(frames))


def prompt_params(training: dict, variant: str) -> dict:
    """The settings one soft prompt depends on, keys sorted: the training rule's params, so that
    adding a seed, a variant or a trained behaviour (or reordering the config) retrains no
    existing prompt."""
    return dict(sorted(settings_for(training, variant).describe().items()))
