"""Which slot position makes the embedded model follow instructions best?

Generates greedy completions for a sample of user messages with each instruction in each slot
position and scores them with simple, stated detectors (stop-word language share; completion
length and EOS rate for "Be concise."; mean word length for ELI5). Prints a table and a JSON
line.

    python benchmarks/placement.py resources/models/SmolLM2-135M-Instruct.json [n_messages]
"""

import json
import re
import sys

import pandas as pd

from softlens.config import load_messages
from softlens.models import load_model, set_threads
from softlens.slot import POSITIONS, HardPrompt, PromptSlot
from softlens.teacher import GenerationSettings, generate

STOP = {
    "spanish": {
        "el",
        "la",
        "los",
        "las",
        "es",
        "de",
        "que",
        "y",
        "en",
        "un",
        "una",
        "por",
        "para",
        "con",
        "del",
        "se",
    },
    "french": {
        "le",
        "la",
        "les",
        "est",
        "de",
        "des",
        "et",
        "en",
        "un",
        "une",
        "pour",
        "avec",
        "du",
        "que",
        "sur",
        "dans",
    },
    "german": {
        "der",
        "die",
        "das",
        "ist",
        "und",
        "ein",
        "eine",
        "zu",
        "mit",
        "den",
        "von",
        "nicht",
        "sie",
        "es",
        "auf",
    },
    "english": {
        "the",
        "is",
        "and",
        "of",
        "to",
        "a",
        "in",
        "it",
        "that",
        "for",
        "with",
        "are",
        "on",
        "you",
        "this",
    },
}
INSTRUCTIONS = {
    "spanish": "Respond in Spanish.",
    "french": "Respond in French.",
    "german": "Respond in German.",
    "concise": "Be concise.",
    "eli5": "Explain it like I'm five years old.",
}


def share(text, lang):
    words = re.findall(r"[a-zà-ÿ]+", text.lower())
    return sum(w in STOP[lang] for w in words) / max(1, len(words))


def score(name, texts, ids, eos):
    if name in ("spanish", "french", "german"):
        return sum(share(t, name) > share(t, "english") for t in texts) / len(texts)
    if name == "concise":
        return sum(len(c) for c in ids) / len(ids)
    return sum(len(w) for t in texts for w in t.split()) / max(
        1, sum(len(t.split()) for t in texts)
    )


def main(manifest, n=12):
    set_threads(2)
    lm = load_model(manifest)
    msgs = load_messages({"file": "config/messages.tsv", "test_fraction": 0.25, "split_seed": 0})
    messages = list(msgs["user_message"][:n])
    settings = GenerationSettings(max_new_tokens=40, batch_size=n)
    rows = []
    base_slot = PromptSlot.for_model(lm)
    base = generate(lm, base_slot, None, messages, settings, desc="unprompted")
    base_txt = [lm.tokenizer.decode(c, skip_special_tokens=True) for c in base]
    for name in INSTRUCTIONS:
        rows.append(
            {"behavior": name, "position": "none", "score": score(name, base_txt, base, None)}
        )
    for pos in POSITIONS:
        slot = PromptSlot.for_model(lm, {"position": pos})
        for name, text in INSTRUCTIONS.items():
            ids = generate(lm, slot, HardPrompt(text), messages, settings, desc=f"{pos}:{name}")
            txt = [lm.tokenizer.decode(c, skip_special_tokens=True) for c in ids]
            rows.append(
                {
                    "behavior": name,
                    "position": pos,
                    "score": score(name, txt, ids, None),
                    "example": txt[0][:80],
                }
            )
    df = pd.DataFrame(rows)
    print(df.pivot(index="behavior", columns="position", values="score").round(2).to_string())
    print(
        "scores: language = share of completions whose stop words are mostly that language; "
        "concise = mean completion tokens (lower is better, cap 40); eli5 = mean word length "
        "(lower is simpler)"
    )
    print(df.dropna().to_string())
    print(json.dumps(df.drop(columns="example").to_dict(orient="records")))


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
