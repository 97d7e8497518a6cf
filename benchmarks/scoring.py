"""A cache's scoring cost: the decoder alone (softlens.logprobs.forward_states) against the whole
model with its logits, as scoring ran before, on the embedded model and the default's contexts.

    python benchmarks/scoring.py [--messages 16] [--positions 6] [--repeats 3] [--threads 1]

Scores one hard prompt on the first `messages` messages of config/messages.tsv, each followed by
`positions` fed completion tokens (a fixed reply: the cost does not depend on it), in one
"inner"-padded batch with the prompt's KV cache shared, as `score` does. Prints seconds per batch
for each way, their ratio, and the largest difference between the states the two return (they
must agree).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from softlens.logprobs import decoder_cache, fed_completions, forward_scored, forward_states
from softlens.models import load_model, set_threads
from softlens.slot import HardPrompt, PromptSlot

MANIFEST = "resources/models/SmolLM2-135M-Instruct.json"


def with_logits(lm, batch, positions, prefix, start):
    """The head's input captured on the way into the output head, after the full forward (the
    former way)."""
    captured = []
    handle = lm.model.get_output_embeddings().register_forward_pre_hook(
        lambda m, a: captured.append(a[0])
    )
    try:
        forward_scored(lm, batch, positions, prefix, start)
    finally:
        handle.remove()
    return captured[0][:, -positions:].float()


def embedded_contexts(n_messages: int, threads: int):
    """The embedded model on the CPU, its slot, the first `n_messages` of config/messages.tsv and
    a fixed reply's token ids (a scoring's cost does not depend on the reply)."""
    set_threads(threads)
    lm = load_model(MANIFEST, {"device": "cpu", "dtype": "float32"})
    messages = list(pd.read_csv("config/messages.tsv", sep="\t")["user_message"][:n_messages])
    reply = lm.tokenizer("Sure, here is a short answer to that.", add_special_tokens=False)
    return lm, PromptSlot.for_model(lm), messages, reply["input_ids"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=16)
    ap.add_argument("--positions", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    lm, slot, messages, reply = embedded_contexts(args.messages, args.threads)
    fed = fed_completions([reply] * len(messages), args.positions, slot.pad_id)
    batch = slot.batch(HardPrompt("Respond in Spanish."), messages, fed, padding_side="inner")
    start = batch.prefix_len
    with torch.no_grad():
        prefix = decoder_cache(lm, batch.inputs_embeds[:1, :start])
        seconds, states = {}, {}
        for name, fn in (("decoder only", forward_states), ("with logits", with_logits)):
            fn(lm, batch, args.positions, prefix, start)  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                states[name] = fn(lm, batch, args.positions, prefix, start)
            seconds[name] = (time.perf_counter() - t0) / args.repeats
    for name, s in seconds.items():
        print(f"{name:>13}: {s:.3f} s per batch of {len(messages)} contexts")
    print(f"with logits / decoder only: {seconds['with logits'] / seconds['decoder only']:.2f}x")
    print(
        "largest state difference: "
        f"{float((states['with logits'] - states['decoder only']).abs().max()):.2e}"
    )


if __name__ == "__main__":
    main()
