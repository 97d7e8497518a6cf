"""Soft-prompt training: our step against a naive full forward+backward, and against PEFT prompt
tuning.

    python benchmarks/training_step.py [behavior] [--steps 40] [--threads 2]
    python benchmarks/training_step.py spanish --random-init benchmarks/architectures/qwen3-4b.json
    \
        --tokenizer DIR --teacher FILE --batch 8      # a GPU machine: times and memory at a real
        size

Needs a finished teacher table for the behaviour (the default run's results/). With --random-init
the model is a randomly initialised one of that architecture (config.json) with the embedded
model's tokenizer, so only times and peak GPU memory mean something (no closure is printed). All
three train the same L soft vectors with the same KL(teacher || student) objective on the same
batches, lr and schedule; they differ only in how the step is computed and where the vectors sit:

- ours: the text before the slot encoded once (KV cache reused), logits only at the T scored
  positions;
- naive: the same inputs, full-sequence forward + backward, logits at every position;
- PEFT: peft's PromptTuningConfig model (virtual tokens before the templated input), full logits.

Prints seconds per step and held-out KL closure along the way, and the ratios the training issue
asks for (step time vs naive and vs PEFT; steps to reach PEFT's final held-out KL).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from softlens.job import ModelJob
from softlens.logprobs import forward_scored, prefix_cache
from softlens.models import load_model, random_model, set_threads
from softlens.scoring import kl_terms, mean_kl
from softlens.slot import PromptSlot, SoftPrompt
from softlens.training import initial_vectors, learning_rate
from softlens.training_settings import TrainSettings

MODEL = "resources/models/SmolLM2-135M-Instruct.json"
EMBEDDED = "resources/models/SmolLM2-135M-Instruct"


def kl_loss(q_logp, target_logp, mask):  # the same KL term train() uses
    m = mask.float().to(q_logp.device)
    return (kl_terms(target_logp.to(q_logp.device), q_logp) * m).sum() / m.sum()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run(name, step_fn, eval_fn, vectors, s, batches, eval_every):
    opt = torch.optim.Adam([vectors], lr=s.lr)
    times, evals = [], {}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for step, idx in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = learning_rate(s, step)
        sync()
        t0 = time.perf_counter()
        loss = step_fn(vectors, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
        if eval_fn is not None and (step + 1) % eval_every == 0:
            with torch.no_grad():
                evals[step + 1] = eval_fn(vectors)
            print(
                f"  {name} step {step + 1}: held-out KL closure {evals[step + 1]:.3f}", flush=True
            )
    if torch.cuda.is_available():
        print(
            f"  {name}: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB",
            flush=True,
        )
    return statistics.median(
        times[1:] or times
    ), evals  # the first step warms up kernels and caches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("behavior", nargs="?", default="spanish")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--naive-steps", type=int, default=5)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument(
        "--random-init",
        metavar="CONFIG_JSON",
        help="a randomly initialised model of this architecture",
    )
    ap.add_argument(
        "--tokenizer", default=str(EMBEDDED), help="tokenizer directory for --random-init"
    )
    ap.add_argument(
        "--teacher", help="teacher table (default: the default run's for the behaviour)"
    )
    args = ap.parse_args()
    set_threads(args.threads)
    import yaml

    cfg = yaml.safe_load(open("config/config.yaml"))
    spec = next(b for b in cfg["behaviors"] if b["name"] == args.behavior)
    settings = {"device": args.device, "dtype": args.dtype}
    lm = (
        random_model(args.random_init, args.tokenizer, settings)
        if args.random_init
        else load_model(MODEL, settings)
    )
    print(
        f"model: {args.random_init or MODEL}, "
        f"{sum(p.numel() for p in lm.model.parameters()) / 1e6:.0f}M "
        f"parameters, {lm.dtype} on {lm.device}"
    )
    s = TrainSettings(steps=args.steps, positions=32, lr=0.03, batch_size=args.batch)
    teacher = args.teacher or f"results/SmolLM2-135M-Instruct/teacher/{args.behavior}.parquet"
    steering = (
        f"results/SmolLM2-135M-Instruct/steering/{args.behavior}.safetensors"
        if spec.get("steering")
        else None
    )
    job = ModelJob(
        model=MODEL,
        settings={**settings, "batch_size": 16, "slot": cfg["model_settings"]["slot"]},
        behavior=spec,
        teacher=teacher,
        steering=steering,
        lm=lm,
    )
    slot = job.slot
    tr, _ = job.targets("train", s.positions)
    te, base = job.targets("test", s.positions)
    kl_base = mean_kl(te, base.logp)
    tr = tr.to(lm.device)  # as train() does: no host-to-device copy of the targets per step
    g = torch.Generator().manual_seed(0)
    init = initial_vectors(lm, s, g).to(lm.device)
    batches = [
        torch.randperm(len(tr.messages), generator=g)[: s.batch_size].tolist()
        for _ in range(args.steps)
    ]
    T = s.positions

    def ours_step(v, idx):
        batch = slot.batch(
            SoftPrompt(v.to(lm.dtype)),
            [tr.messages[i] for i in idx],
            [tr.fed[i] for i in idx],
            "inner",
        )
        ours_step.prefix = ours_step.prefix or prefix_cache(lm, batch)
        q, _ = forward_scored(lm, batch, T, ours_step.prefix, batch.slot_start)
        return kl_loss(q, tr.logp[idx], tr.mask[idx])

    ours_step.prefix = None

    def naive_step(v, idx):
        batch = slot.batch(
            SoftPrompt(v.to(lm.dtype)),
            [tr.messages[i] for i in idx],
            [tr.fed[i] for i in idx],
            "inner",
        )
        q = torch.log_softmax(lm.model(**batch.model_inputs()).logits.float(), -1)[:, -T:]
        return kl_loss(q, tr.logp[idx], tr.mask[idx])

    def ours_eval(v):
        batch_logp = []
        for i in range(0, len(te.messages), 16):
            b = slot.batch(
                SoftPrompt(v.to(lm.dtype)), te.messages[i : i + 16], te.fed[i : i + 16], "inner"
            )
            batch_logp.append(forward_scored(lm, b, T, prefix_cache(lm, b), b.slot_start)[0])
        return 1 - mean_kl(te, torch.cat(batch_logp)) / kl_base

    print(
        f"{args.behavior}: {len(tr.messages)} train / {len(te.messages)} test messages, "
        f"L={s.length}, "
        f"batch {s.batch_size}, T={T}, {args.threads} threads; unprompted held-out KL {kl_base:.3f}"
    )
    if args.random_init:  # closure of a random model means nothing: time the steps only
        ours_eval = None
    t_ours, ev_ours = run(
        "ours", ours_step, ours_eval, init.clone().requires_grad_(True), s, batches, args.eval_every
    )
    t_naive, _ = run(
        "naive",
        naive_step,
        None,
        init.clone().requires_grad_(True),
        s,
        batches[: args.naive_steps],
        args.eval_every,
    )

    # PEFT prompt tuning: its own model wrapper, virtual tokens before the templated input.
    from peft import PromptTuningConfig, TaskType, get_peft_model

    peft_model = get_peft_model(
        lm.model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=s.length)
    )
    emb = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        emb.copy_(init)
    pslot = PromptSlot(lm.tokenizer, lm.embeddings, "before_template")

    def peft_logp(messages, fed):
        rows = [
            pslot.tokenize(pslot.texts(m, has_slot=True)[1]) + list(f)
            for m, f in zip(messages, fed)
        ]
        n = max(map(len, rows))
        ids = torch.full((len(rows), n), slot.pad_id)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for r, row in enumerate(rows):  # right padding, as PEFT training does
            ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
        logits = peft_model(
            input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)
        ).logits  # virtual tokens included
        end = torch.tensor([s.length + len(row) for row in rows])
        idx = end[:, None] - T + torch.arange(T)
        return torch.log_softmax(logits[torch.arange(len(rows))[:, None], idx].float(), -1)

    def peft_step(v, idx):
        return kl_loss(
            peft_logp([tr.messages[i] for i in idx], [tr.fed[i] for i in idx]),
            tr.logp[idx],
            tr.mask[idx],
        )

    def peft_eval(v):
        return (
            1
            - mean_kl(
                te,
                torch.cat(
                    [
                        peft_logp(te.messages[i : i + 16], te.fed[i : i + 16])
                        for i in range(0, len(te.messages), 16)
                    ]
                ),
            )
            / kl_base
        )

    t_peft, ev_peft = run(
        "peft", peft_step, None if args.random_init else peft_eval, emb, s, batches, args.eval_every
    )
    print(f"\nseconds per step (median): ours {t_ours:.3f}, naive {t_naive:.3f}, PEFT {t_peft:.3f}")
    print(
        f"ours / naive step time: {t_ours / t_naive:.2f}   ours / PEFT step time: "
        f"{t_ours / t_peft:.2f}"
    )
    if args.random_init:
        return
    final_peft = ev_peft[max(ev_peft)]
    reach = next((k for k, v in sorted(ev_ours.items()) if v >= final_peft), None)
    print(
        f"held-out KL closure after {args.steps} steps: ours {ev_ours[max(ev_ours)]:.3f}, PEFT "
        f"{final_peft:.3f}"
    )
    print(
        f"steps for ours to reach PEFT's final closure: {reach} of {args.steps} "
        f"({'never' if reach is None else f'{reach / args.steps:.2f}'} of PEFT's)"
    )


if __name__ == "__main__":
    main()
