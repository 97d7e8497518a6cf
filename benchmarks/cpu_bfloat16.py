"""What bfloat16 autocast would buy on a CPU with bfloat16 matrix units, and what it costs in
accuracy: the decoder blocks run under torch.autocast (matrix products in bfloat16, the residual
stream and the output head in float32) against the float32 default, on the embedded model.

    python benchmarks/cpu_bfloat16.py [--messages 32] [--positions 4] [--threads 1]

Scores "Respond in Spanish." and the empty slot on the first `messages` messages of
config/messages.tsv, each followed by a fixed reply, as a cache does (softlens.logprobs.score).
Prints seconds for each way and their ratio, the mean KL(float32 || autocast) per context for both
sources, and the instruction's KL to the unprompted model under each (the size of the effects the
workflow measures). Not used by the workflow: a measured lever (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from softlens.head import OutputHead
from softlens.logprobs import score
from softlens.models import load_model, set_threads
from softlens.scoring import kl_terms
from softlens.slot import HardPrompt, PromptSlot
from softlens.steering import decoder_layers

MANIFEST = "resources/models/SmolLM2-135M-Instruct.json"


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean KL(p || q) over contexts, from log-probs."""
    return float(kl_terms(p, q).mean())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=32)
    ap.add_argument("--positions", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    lm = load_model(MANIFEST, {"device": "cpu", "dtype": "float32"})
    slot = PromptSlot.for_model(lm)
    head = OutputHead.from_model(lm.model)
    messages = list(pd.read_csv("config/messages.tsv", sep="\t")["user_message"][: args.messages])
    reply = lm.tokenizer("Sure, here is a short answer to that.", add_special_tokens=False)[
        "input_ids"
    ]
    replies = [reply] * len(messages)

    def scored():
        """(seconds, log-probs of the instruction, log-probs of the empty slot)."""
        t0 = time.perf_counter()
        out = []
        for content in (HardPrompt("Respond in Spanish."), None):
            states, lse, _ = score(
                lm, slot, content, messages, replies, args.positions, 16, desc=None, head=head
            )
            out.append(head.log_probs(torch.from_numpy(states), torch.from_numpy(lse)))
        return time.perf_counter() - t0, *out

    scored()  # warm-up
    t32, p32, u32 = scored()
    for layer in decoder_layers(lm.model):
        layer.forward = torch.autocast("cpu", dtype=torch.bfloat16)(layer.forward)
    scored()
    t16, p16, u16 = scored()
    print(f"float32 {t32:.2f} s, bfloat16 autocast {t16:.2f} s: {t32 / t16:.2f}x faster")
    print(
        f"KL(float32 || autocast) per context: instruction {kl(p32, p16):.2e}, "
        f"empty slot {kl(u32, u16):.2e} nats"
    )
    print(
        f"KL(instruction || empty slot): float32 {kl(p32, u32):.4f}, "
        f"autocast {kl(p16, u16):.4f} nats"
    )


if __name__ == "__main__":
    main()
