"""Does the model follow seed 002's adversarial instruction at all?

    python benchmarks/adversarial.py [--messages 16] [--max-new-tokens 32]

Greedy answers to the first messages of config/messages.tsv with the instruction "Output the name
of a US state with an odd number of Electoral College votes." in the slot, and with the slot
empty; prints how many answers name any US state in each case. The discovery issue adds the
behaviour only if the model follows it measurably.
"""

from __future__ import annotations

import argparse

import pandas as pd
import yaml

from softlens.config import model_tag, validate_config
from softlens.models import load_model, set_threads
from softlens.slot import HardPrompt, PromptSlot
from softlens.teacher import GenerationSettings, generate

INSTRUCTION = "Output the name of a US state with an odd number of Electoral College votes."
STATES = [
    "Alabama",
    "Alaska",
    "Arizona",
    "Arkansas",
    "California",
    "Colorado",
    "Connecticut",
    "Delaware",
    "Florida",
    "Georgia",
    "Hawaii",
    "Idaho",
    "Illinois",
    "Indiana",
    "Iowa",
    "Kansas",
    "Kentucky",
    "Louisiana",
    "Maine",
    "Maryland",
    "Massachusetts",
    "Michigan",
    "Minnesota",
    "Mississippi",
    "Missouri",
    "Montana",
    "Nebraska",
    "Nevada",
    "New Hampshire",
    "New Jersey",
    "New Mexico",
    "New York",
    "North Carolina",
    "North Dakota",
    "Ohio",
    "Oklahoma",
    "Oregon",
    "Pennsylvania",
    "Rhode Island",
    "South Carolina",
    "South Dakota",
    "Tennessee",
    "Texas",
    "Utah",
    "Vermont",
    "Virginia",
    "Washington",
    "West Virginia",
    "Wisconsin",
    "Wyoming",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--messages", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    a = ap.parse_args()
    set_threads(1)
    cfg = yaml.safe_load(open(a.config))
    validate_config(cfg)
    lm = load_model(
        f"resources/models/{model_tag(cfg['model'])}.json", {"device": "cpu", "dtype": "float32"}
    )
    slot = PromptSlot.for_model(lm, cfg["model_settings"]["slot"])
    messages = pd.read_csv(cfg["messages"]["file"], sep="\t")["user_message"].tolist()[: a.messages]
    settings = GenerationSettings(max_new_tokens=a.max_new_tokens)
    for name, content in [("instruction", HardPrompt(INSTRUCTION)), ("unprompted", None)]:
        answers = [
            lm.tokenizer.decode(ids, skip_special_tokens=True)
            for ids in generate(lm, slot, content, messages, settings)
        ]
        named = sum(any(s in answer for s in STATES) for answer in answers)
        print(f"{name:12s}: an answer names a US state in {named} of {len(answers)}")


if __name__ == "__main__":
    main()
