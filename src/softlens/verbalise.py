"""Self-verbalisation (seed 001, after neologism learning): ask the model what a soft prompt
means, then score each answer by plugging it in as a hard prompt and measuring the KL closure it
reaches.

The soft prompt sits in the slot exactly where it was trained (a contextualised prompt inside its
first frame) and the user message asks about it. Answers are sampled; nothing in them is
executed: each is only tokenized and scored.
"""

from __future__ import annotations

import re

from .config import ConfigError

_QUOTES = "\"'`“”‘’«»"


def clean_candidate(text: str, max_chars: int = 200) -> str:
    """The first non-empty line of an answer, without surrounding quotes, list marks or a label
    like "Instruction:"; "" if nothing is left."""
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip()
        line = re.sub(r"^(?:the\s+)?instruction\s*(?:is)?\s*:\s*", "", line, flags=re.IGNORECASE)
        line = line.strip().strip(_QUOTES).strip()
        if line:
            return line[:max_chars]
    return ""


def candidate_requests(templates, samples: int) -> list[tuple[int, str]]:
    """(template index, user message) for every sample to draw."""
    if samples < 1:
        raise ConfigError(f"reading.verbalisation.samples = {samples}: need at least one sample")
    if not templates:
        raise ConfigError("reading.verbalisation.templates is empty")
    return [(i, t) for i, t in enumerate(templates) for _ in range(samples)]
