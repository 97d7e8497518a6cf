"""Do contrastive soft prompts fall short of the steering teacher in strength or in direction?

    python benchmarks/contrastive_strength.py RUN_DIR [--behaviors pirate_contrastive pirate_steer]
        [--variant prepend] [--seed 0] [--amounts 0 0.25 0.5 0.75 1 1.25 1.5 2]

RUN_DIR is the root of a run of config/weights.yaml (it holds resources/ and results/). Each
trained prompt v is moved along its own training displacement, v(a) = v0 + a (v - v0), v0 its
initialisation (recomputed from the prompt's seed and settings, so a = 1 is the trained prompt), and
scored against its teacher (the steering vector, for both behaviours) on the TRAIN messages: KL
closure, mean over the prompt's frames. The steering-distilled prompt is the control: it was
trained on this KL, so its best amount should be near 1. If the contrastive prompt's best amount
is far from 1 and its closure there near the control's, the shortfall is one of strength; if no
amount comes near, it is one of direction.

The texts' side: the DPO margin on the same train messages (mean over every message, positive and
negative text of (log p(pos|n) - log p_0(pos|n)) - (log p(neg|n) - log p_0(neg|n)), nats, p_0
unprompted) of the steering teacher itself and of each prompt at each amount. A prompt that states
the texts' preference far more strongly than the teacher does, yet closes little of its KL, has
learned the texts and not the rest of what the vector does to the distribution.

A diagnostic, not a method: the amount is scored against the teacher, which contrastive training
never sees; test messages are not read. Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml

from softlens.config import behavior, with_derived_teachers
from softlens.contrastive import Contrastive
from softlens.io import read_soft_prompt
from softlens.job import ModelJob
from softlens.logprobs import Student
from softlens.models import set_threads
from softlens.scoring import kl_closure, mean_kl
from softlens.sources import activate, soft_content
from softlens.training import evaluate, initial_vectors
from softlens.training_settings import TrainSettings, settings_for


def closures(job: ModelJob, path: Path, amounts: list[float], texts: Contrastive) -> list[dict]:
    vectors, meta = read_soft_prompt(path, job.lm.embeddings.weight.shape[1])
    settings = {**meta["settings"], "frames": tuple(meta["settings"]["frames"])}
    s = TrainSettings(**settings)
    start = initial_vectors(job.lm, s, torch.Generator().manual_seed(int(meta["seed"])))
    target, base = job.targets("train", s.positions)
    kl_base = mean_kl(target, base.logp)
    rows = []
    for a in amounts:
        v = (start + a * (vectors - start)).to(job.lm.device, job.lm.dtype)
        with torch.no_grad():
            kl = float(
                np.mean(
                    list(
                        evaluate(
                            job.lm, job.slot, v, target, s.frames, s.positions, job.batch_size
                        ).values()
                    )
                )
            )
        rows.append(
            {
                "amount": a,
                "norm": float(v.float().norm(dim=-1).mean()),
                "kl_train": kl,
                "closure_train": kl_closure(kl, kl_base),
                "texts_margin": texts.mean_margin(
                    Student(job.lm, job.slot), soft_content(v, s.frames[0]), job.batch_size
                ),
            }
        )
        print(
            f"  {a:6.2f}  mean norm {rows[-1]['norm']:6.3f}  KL {kl:.4f}  "
            f"closure {rows[-1]['closure_train']:.3f}  texts' margin "
            f"{rows[-1]['texts_margin']:6.2f} nats",
            flush=True,
        )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--config", default="config/weights.yaml", help="the run's behaviours")
    ap.add_argument("--behaviors", nargs="+", default=["pirate_contrastive", "pirate_steer"])
    ap.add_argument("--variant", default="prepend")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--amounts", nargs="+", type=float, default=[0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2]
    )
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    set_threads(a.threads)
    config = yaml.safe_load(Path("config/config.yaml").read_text())
    config["behaviors"] = yaml.safe_load(Path(a.config).read_text())["behaviors"]
    with_derived_teachers(config, a.model)
    os.chdir(a.run)  # the model's manifest names its files relative to the run
    results, lm, texts = {}, None, None
    for name in a.behaviors:
        d = Path("results") / a.model
        job = ModelJob(
            model=Path("resources/models") / f"{a.model}.json",
            settings=config["model_settings"],
            behavior=behavior(config, name),
            teacher=d / "teacher" / f"{name}.parquet",
            targets=[d / "targets" / name / f for f in ("target.parquet", "unprompted.parquet")],
            lm=lm,
        )
        lm = job.lm  # one model for every behaviour
        if texts is None:  # the steering texts, on the train messages (the same teacher contexts)
            s = settings_for(config["training"], "prepend")  # the texts' positions
            texts = Contrastive(job, s, beta=0.1, source=name)
            steering = d / "steering" / f"{name}.safetensors"
            with activate(job.lm, job.slot, {"kind": "steered"}, steering) as (slot, content):
                teacher_margin = texts.mean_margin(Student(job.lm, slot), content, job.batch_size)
            print(
                f"steering teacher: texts' margin {teacher_margin:.2f} nats on the train messages"
            )
        print(f"{name} ({a.variant}, seed {a.seed}): closure on the train messages by amount")
        rows = closures(
            job,
            d / "softprompt" / name / f"{a.variant}-seed{a.seed}.safetensors",
            a.amounts,
            texts,
        )
        best = max(rows, key=lambda r: r["closure_train"])
        trained = next(r for r in rows if r["amount"] == 1)
        print(
            f"  best amount {best['amount']:g}: closure {best['closure_train']:.3f} "
            f"(trained, amount 1: {trained['closure_train']:.3f})"
        )
        results[name] = {"rows": rows, "best": best, "trained": trained}
    print(
        json.dumps(
            {
                "variant": a.variant,
                "seed": a.seed,
                "teacher_texts_margin": teacher_margin,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
