"""Batching messages by length: a cache's scoring (softlens.logprobs.score, which batches the
messages shortest first) against the same forwards batched in file order, as it ran before, on
the embedded model and the default's messages.

    python benchmarks/length_batches.py [--messages 200] [--positions 4] [--batch-size 16]
                                        [--repeats 4] [--threads 1]

Scores one hard prompt on the first `messages` messages of config/messages.tsv, each followed by
a fixed reply (the cost does not depend on it), both ways, alternating, `repeats` times. Prints
the tokens each way feeds after the shared prefix (padding included), seconds per source, their
ratio, and the largest differences between the states and log-normalisers the two return (they
must agree).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scoring import embedded_contexts  # benchmarks/scoring.py: the model, messages and reply

from softlens.head import OutputHead
from softlens.logprobs import SharedPrefix, fed_completions, forward_states, length_batches, score
from softlens.slot import HardPrompt

PROMPT = HardPrompt("Respond in Spanish.")


@torch.no_grad()
def file_order(lm, slot, messages, completions, positions, batch_size):
    """The states `score` returned before, batching the messages in file order (and their
    log-normalisers, as `score` computes them)."""
    fed, prefix, out = fed_completions(completions, positions, slot.pad_id), None, []
    for i in range(0, len(messages), batch_size):
        batch = slot.batch(
            PROMPT, messages[i : i + batch_size], fed[i : i + batch_size], padding_side="inner"
        )
        prefix = prefix or SharedPrefix(lm)(batch)
        x = forward_states(lm, batch, positions, prefix, batch.prefix_len)
        out += [x[b, : min(positions, len(completions[i + b]))] for b in range(x.shape[0])]
    states = torch.cat(out)
    return states.numpy(), OutputHead.from_model(lm.model).lse(states).numpy()


def padded_tokens(slot, messages, batches) -> int:
    """Tokens the forwards read after the shared prefix: each batch pads to its longest row."""
    after = [len(slot.tokenize(slot.texts(m, True)[1])) for m in messages]
    return sum(len(b) * max(after[i] for i in b) for b in batches)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--positions", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    lm, slot, messages, reply = embedded_contexts(args.messages, args.threads)
    completions = [reply] * len(messages)
    n, B = len(messages), args.batch_size
    tokens = {
        "file order": padded_tokens(
            slot, messages, [range(i, min(i + B, n)) for i in range(0, n, B)]
        ),
        "by length": padded_tokens(slot, messages, length_batches(slot, messages, B)),
    }
    ways = {
        "file order": lambda: file_order(lm, slot, messages, completions, args.positions, B),
        "by length": lambda: score(
            lm, slot, PROMPT, messages, completions, args.positions, B, None
        )[:2],
    }
    seconds, states = {k: [] for k in ways}, {}
    for fn in ways.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            states[name] = fn()
            seconds[name].append(time.perf_counter() - t0)
    for name in ways:
        print(
            f"{name:>10}: {tokens[name]:,} tokens after the prefix (padding included), "
            f"{np.mean(seconds[name]):.2f} s per source ({n} messages, T = {args.positions}, "
            f"batches of {B}; runs {', '.join(f'{s:.2f}' for s in seconds[name])})"
        )
    ratio = np.mean(seconds["file order"]) / np.mean(seconds["by length"])
    print(
        f"file order / by length: {ratio:.2f}x time, "
        f"{tokens['file order'] / tokens['by length']:.2f}x tokens"
    )
    (x0, c0), (x1, c1) = states["file order"], states["by length"]
    print(
        f"largest difference: states {np.abs(x0 - x1).max():.2e} (largest |state| "
        f"{np.abs(x0).max():.1f}), log-normalisers {np.abs(c0 - c1).max():.2e}"
    )


if __name__ == "__main__":
    main()
