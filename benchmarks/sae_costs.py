"""The SAE stage's two design choices, each measured against the obvious alternative in one run.

    python benchmarks/sae_costs.py [--batch 32] [--new-tokens 64] [--threads 1] [--steps 20]

1. Activation store: capture the residual stream with hooks while the text is generated, against
   generating first and then running a teacher-forced forward pass over the kept tokens (the same
   tokens, the same activations). Prints seconds per stored token for both and their ratio.
2. SAE training step (d = the model's width, 8x features, k = 32, batch 1024): the top-k decoder
   as a sparse sum of k decoder rows (embedding_bag), against a dense (batch x features) matmul.
   Prints seconds per step for both and their ratio.

Needs the embedded model (resources/models/*.json, from the default run's first rule).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from softlens.activations import CorpusSettings, corpus_prompts, generate_batch, user_turn_start
from softlens.config import load_corpus_instructions, load_messages
from softlens.models import load_model, set_threads
from softlens.sae import SAESettings, initial_sae, training_loss
from softlens.slot import PromptSlot
from softlens.steering import captured
from softlens.teacher import eos_ids


def store_costs(lm, slot, prompts, layers, s: CorpusSettings) -> tuple[float, float]:
    torch.manual_seed(0)
    t = time.perf_counter()
    ids, _ = generate_batch(lm, slot, prompts, layers, s, eos_ids(lm))
    hooked = time.perf_counter() - t
    n = sum(map(len, ids))

    torch.manual_seed(0)
    t = time.perf_counter()
    batch = slot.batch(None, list(prompts), padding_side="left")
    new = lm.model.generate(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        max_new_tokens=s.max_new_tokens,
        do_sample=True,
        temperature=s.temperature,
        top_p=None,
        top_k=None,
        pad_token_id=slot.pad_id,
        eos_token_id=sorted(eos_ids(lm)),
    )
    before = batch.token_ids.shape[1]
    start = user_turn_start(slot)
    seqs = []
    for b, row in enumerate(new.tolist()):
        real = int(batch.attention_mask[b].sum())
        seqs.append(
            batch.token_ids[b, before - real :].tolist() + row[: len(ids[b]) - (real - start)]
        )
    width = max(map(len, seqs))
    pad = torch.tensor([[slot.pad_id] * (width - len(q)) + q for q in seqs])
    mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in seqs])
    with torch.no_grad(), captured(lm.model, layers):
        lm.model.model(
            input_ids=pad, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        )
    two_pass = time.perf_counter() - t
    return hooked / n, two_pass / n


def dense_loss(sae, x, s):
    xs = x * sae.scale
    pre = (xs - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, indices = pre.topk(s.k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
    return (xs - (z @ sae.W_dec + sae.b_dec)).pow(2).sum(-1).mean()


def step_cost(loss_fn, d: int, steps: int) -> float:
    s = SAESettings()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4 * s.batch_size, d, generator=g) * 3
    sae = initial_sae(x, s, g)
    opt = torch.optim.Adam(sae.parameters(), lr=s.lr)
    dead = torch.zeros(sae.d_sae, dtype=torch.bool)
    t = time.perf_counter()
    for i in range(steps):
        xb = x[(i % 4) * s.batch_size : (i % 4 + 1) * s.batch_size]
        opt.zero_grad()
        loss_fn(sae, xb, dead, s).backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resources/models/SmolLM2-135M-Instruct.json")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    set_threads(a.threads)
    lm = load_model(a.model, {"device": "cpu", "dtype": "float32"})
    slot = PromptSlot.for_model(lm)
    msgs = list(
        load_messages({"file": "config/messages.tsv", "test_fraction": 0.25, "split_seed": 0})[
            "user_message"
        ]
    )
    prompts = corpus_prompts(msgs, load_corpus_instructions("config/sae_corpus.tsv"), 0)[: a.batch]
    n_layers = lm.num_layers
    layers = [n_layers // 4, n_layers // 2, 3 * n_layers // 4]
    s = CorpusSettings(max_new_tokens=a.new_tokens, batch_size=a.batch, temperature=0.8, top_p=1.0)
    hooked, two_pass = store_costs(lm, slot, prompts, layers, s)
    print(
        f"activation store, {a.batch} conversations x {a.new_tokens} new tokens, {a.threads} "
        "thread(s):"
    )
    print(
        f"  capture while generating {hooked * 1e3:.2f} ms/token; generate then forward "
        f"{two_pass * 1e3:.2f} "
        f"ms/token; ratio {hooked / two_pass:.2f}"
    )
    d = lm.embeddings.weight.shape[1]
    sparse = step_cost(lambda sae, x, dead, s: training_loss(sae, x, dead, s)[0], d, a.steps)
    dense = step_cost(lambda sae, x, dead, s: dense_loss(sae, x, s), d, a.steps)
    print(
        f"SAE step, d={d}, {8 * d} features, k=32, batch 1024: sparse decode {sparse:.3f} s, "
        "dense decode "
        f"{dense:.3f} s; ratio {sparse / dense:.2f}"
    )


if __name__ == "__main__":
    main()
