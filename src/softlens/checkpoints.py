"""Resumable jobs: a checkpoint is written atomically with the identity of the config that wrote
it, and refused (naming the differing keys) by a run of another config."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError
from .io import atomic_path


def save_checkpoint(path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, identity: dict) -> dict | None:
    """The checkpoint at `path` if any; an error naming the differing keys if it is from another
    config."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"resume checkpoint {str(path)!r} is unreadable ({e}); delete it to start over"
        ) from None
    old = state.get("identity", {})
    diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {identity.get(k)!r}" for k in diff[:5])
        raise ConfigError(
            f"resume checkpoint {str(path)!r} was written for a different config ({detail}); "
            f"delete it to start over"
        )
    return state
