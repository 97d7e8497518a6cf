"""HotFlip/GCG candidate evaluation: our batched scoring against scoring each candidate alone.

    python benchmarks/search_step.py [behavior] [--candidates 16] [--messages 4] [--positions 8]
    [--threads 1]

Needs the default run's teacher table for the behaviour. Both score the same random candidates
(token sequences of length L in the bare slot) by KL(teacher || prompted) at the first
`positions` completion positions of the same training messages:

- ours (repair.SearchObjective.losses): candidates x messages in one batch per chunk, the KV
  cache of the text before the slot computed once, logits only at the scored positions;
- one at a time: each candidate's sequences through a plain full forward (all positions, all
  logits).

Prints seconds per candidate batch for both, the ratio, and the largest difference in the losses.
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from softlens.config import behavior, model_tag, validate_config
from softlens.geometry import Vocabulary
from softlens.io import read_teacher
from softlens.models import load_model, set_threads
from softlens.repair import SearchObjective, SearchSettings
from softlens.scoring import contexts, kl_terms, make_targets
from softlens.slot import HardPrompt, PromptSlot, TokenPrompt


def one_at_a_time(lm, slot, targets, cands, positions):
    out = []
    for c in cands:
        batch = slot.batch(TokenPrompt(tuple(c.tolist())), targets.messages, targets.fed)
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(**batch.model_inputs()).logits.float(), -1)
        idx, _ = batch.scored_positions(positions)
        q = logp.gather(1, idx[..., None].expand(-1, -1, logp.shape[-1]))
        m = targets.mask.float()
        out.append(float((kl_terms(targets.logp, q) * m).sum() / m.sum()))
    return torch.tensor(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("behavior", nargs="?", default="spanish")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--messages", type=int, default=4)
    ap.add_argument("--positions", type=int, default=8)
    ap.add_argument("--length", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    set_threads(a.threads)
    cfg = yaml.safe_load(open(a.config))
    validate_config(cfg)
    tag = model_tag(cfg["model"])
    lm = load_model(f"resources/models/{tag}.json", {"device": "cpu", "dtype": "float32"})
    slot = PromptSlot.for_model(lm, cfg["model_settings"]["slot"])
    messages, completions = contexts(
        read_teacher(f"results/{tag}/teacher/{a.behavior}.parquet"), "train"
    )
    instruction = behavior(cfg, a.behavior).get("instruction")
    if not instruction:
        raise SystemExit(f"{a.behavior!r} has no instruction: pick an instruction behaviour")
    targets = make_targets(
        lm,
        slot,
        HardPrompt(instruction),
        messages[: a.messages],
        completions[: a.messages],
        a.positions,
        16,
    )
    vocab = Vocabulary(lm)
    s = SearchSettings(positions=a.positions, messages=a.messages)
    objective = SearchObjective(lm, slot, targets, ("___",), vocab.all, s)
    g = torch.Generator().manual_seed(0)
    cands = vocab.ids[torch.randint(len(vocab.ids), (a.candidates, a.length), generator=g)]
    objective.losses(cands[:1])  # builds the template and the prefix cache once, as a search does

    def timed(fn):
        best = float("inf")
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_ours, ours = timed(lambda: objective.losses(cands))
    t_naive, naive = timed(lambda: one_at_a_time(lm, slot, targets, cands, a.positions))
    print(
        f"{a.candidates} candidates x {a.messages} messages x {a.positions} positions, "
        f"L={a.length}, "
        f"{a.threads} thread(s), best of {a.repeats}"
    )
    print(f"  ours (batched, prefix KV cache, scored logits only): {t_ours:.2f} s")
    print(f"  one candidate at a time, full forward:               {t_naive:.2f} s")
    print(
        f"  ratio ours/one-at-a-time: {t_ours / t_naive:.2f}; max |loss difference| "
        f"{float((ours - naive).abs().max()):.2e}"
    )


if __name__ == "__main__":
    main()
