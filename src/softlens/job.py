"""What a model job starts from, built once (the workflow's scripts build it from the rule's
declared inputs; tests build it directly): the model with its dtype and device rules, the prompt
slot, the batch size and, for a job that serves a behaviour, its spec, its teacher's completions
and steering vector. A soft-prompt job also names its prompt (SoftPrompt).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import prompt_key, with_defaults
from .scoring import Targets, cached_targets, context_rows, contexts, make_targets


@dataclass(frozen=True)
class SoftPrompt:
    """Names one trained soft prompt: its behaviour, variant and seed, and where it is stored."""

    behavior: str
    variant: str
    seed: int
    path: str | None = None

    @property
    def key(self) -> str:
        """Its source key in the log-prob caches."""
        return prompt_key(self.variant, self.seed)

    def labels(self) -> dict:
        """The columns that name it in every table."""
        return {"behavior": self.behavior, "variant": self.variant, "seed": self.seed}


class ModelJob:
    """The model, slot and batch size of one job; with `behavior` and `teacher`, that behaviour's
    teacher (its source activated with `steering` where it is a steering vector) on its contexts.
    `lm` is a model already loaded (benchmarks' random models); by default `model` is loaded."""

    def __init__(
        self,
        *,
        model,
        settings: dict,
        behavior: dict | None = None,
        teacher=None,
        steering=None,
        targets=None,
        lm=None,
    ):
        from .io import read_teacher
        from .models import load_model
        from .slot import PromptSlot

        settings = with_defaults(settings, "model_settings")
        self.model, self.settings, self.behavior, self.steering = (
            model,
            settings,
            behavior,
            steering,
        )
        self.lm = lm if lm is not None else load_model(model, settings)
        self.slot = PromptSlot.for_model(self.lm, settings["slot"])
        self.batch_size = settings["batch_size"]
        self.teacher: pd.DataFrame | None = None if teacher is None else read_teacher(teacher)
        # (teacher, unprompted) factored caches of the teacher's contexts (rule teacher_targets)
        self.targets_files = None if targets is None else tuple(targets)
        self._cached = None

    @contextmanager
    def activated(self, source: dict | None = None):
        """(slot, content) with `source` active (default: the behaviour's teacher)."""
        from .sources import activate, behavior_source

        with activate(
            self.lm, self.slot, source or behavior_source(self.behavior), self.steering
        ) as active:
            yield active

    def targets(
        self,
        split: str,
        positions: int,
        *,
        layer: int | None = None,
        rows: pd.DataFrame | None = None,
    ) -> tuple[Targets, Targets]:
        """The teacher's and the unprompted model's targets on one split's contexts (of the
        teacher table, or of its `rows`), with the teacher's states after block `layer` where
        given. Read from the job's cached targets where it has them (and they hold the positions
        and no layer is asked for), else computed with the model."""
        table = self.teacher if rows is None else rows
        messages, completions = contexts(table, split)
        if self.targets_files and layer is None and positions <= self._cached_positions():
            ids = list(context_rows(table, split)["message_id"])
            return tuple(
                cached_targets(
                    self._head, cache, ids, completions, positions, self.slot.pad_id, messages
                )
                for cache in self._cached
            )
        with self.activated() as (slot, content):
            target = make_targets(
                self.lm, slot, content, messages, completions, positions, self.batch_size, layer
            )
        base = make_targets(
            self.lm, self.slot, None, messages, completions, positions, self.batch_size
        )
        return target, base

    def _cached_positions(self) -> int:
        """Positions per message the cached targets hold (read once)."""
        if self._cached is None:
            from .head import OutputHead
            from .io import read_metadata, read_states

            self._head = OutputHead.from_model(self.lm.model)  # on the model's device
            self._cached = [read_states(f) for f in self.targets_files]
            self._positions = min(int(read_metadata(f)["positions"]) for f in self.targets_files)
        return self._positions

    def selection(
        self, messages: int, positions: int, *, seed: int, exclude=()
    ) -> tuple[Targets, Targets]:
        """Targets on `messages` train messages drawn with `seed`, none of `exclude`: where
        readers choose among their candidates, never on the test messages."""
        t = self.teacher
        train = t[(t["split"] == "train") & (t["completion_ids"].map(len) > 0)]
        ids = train.loc[~train["message_id"].isin(exclude), "message_id"].unique()
        chosen = np.random.default_rng(seed).permutation(ids)[:messages]
        return self.targets("train", positions, rows=train[train["message_id"].isin(chosen)])

    def soft_prompt(self, prompt: SoftPrompt):
        """The prompt's vectors (L, d) on the model's device, float32; refused if trained for
        another model."""
        from .io import read_soft_prompt

        vectors, meta = read_soft_prompt(prompt.path, self.lm.embeddings.weight.shape[1])
        if meta.get("model") not in (None, str(self.model)):
            raise ValueError(
                f"soft prompt {str(prompt.path)!r} was trained for model {meta['model']!r}, "
                f"not this run's {str(self.model)!r}"
            )
        return vectors.to(self.lm.device)

    def generation(self, **settings):
        """GenerationSettings at this job's batch size."""
        from .teacher import GenerationSettings

        return GenerationSettings(batch_size=self.batch_size, **settings)
