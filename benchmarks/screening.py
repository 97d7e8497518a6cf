"""Pool screening cost: seconds per candidate as the pool grows, and the work split over shards.

    python benchmarks/screening.py [behavior] [--sizes 16 32 64] [--shards 4] [--messages 8]
    [--threads 1]

Needs the default run's teacher table, target cache and embedded model. Scores the first n
templated candidates of the default pool against the behaviour's target with the uniform mixture
as the current fit (the cost does not depend on it), exactly as a screening job does
(discovery.score_texts and screening_scores). Prints seconds per candidate for each size, the
ratio of total time to size (flat = linear), and the largest shard's share of the candidates for
`--shards` (round robin).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
import yaml

from softlens.config import model_tag, validate_config
from softlens.discovery import Residual, score_texts, screening_rows, screening_scores
from softlens.head import read_head
from softlens.io import read_states, read_teacher
from softlens.models import load_model, set_threads
from softlens.pool import build_pool, shard, templated
from softlens.slot import PromptSlot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("behavior", nargs="?", default="spanish")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--messages", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    set_threads(a.threads)
    cfg = yaml.safe_load(open(a.config))
    validate_config(cfg)
    tag, d = model_tag(cfg["model"]), cfg["discovery"]["pool"]
    lm = load_model(f"resources/models/{tag}.json", {"device": "cpu", "dtype": "float32"})
    slot = PromptSlot.for_model(lm, cfg["model_settings"]["slot"])
    teacher = read_teacher(f"results/{tag}/teacher/{a.behavior}.parquet")
    head = read_head(f"results/{tag}/head.safetensors")
    keys, x, lse = read_states(f"results/{tag}/logprobs/{a.behavior}/target.parquet")
    rows = screening_rows(keys, 0, a.messages)
    ids = keys.loc[rows, "message_id"].unique()
    P = head.moments(torch.from_numpy(x[rows]), torch.from_numpy(lse[rows]))
    u = torch.zeros(int(rows.sum()), x.shape[1])  # the uniform mixture as the current fit
    lse_u = head.lse(u, 0.0)
    residual = Residual(
        keys[rows], P, head.moments(u, lse_u, 0.0), float(P.kl_to(u, lse_u, 0.0).mean()), []
    )
    pool = build_pool(
        pd.DataFrame(
            {
                "text": templated(d["templates"], d["size"], d["seed"]),
                "kind": "templated",
                "source": "templates",
            }
        ),
        [],
        d["near_duplicate"],
    )
    texts = list(pool.loc[pool["removed"] == "", "text"])
    positions = cfg["logprobs"]["positions"]
    list(score_texts(lm, slot, teacher, texts[:2], positions, 16, ids))  # warm-up
    print(
        f"{a.messages} messages x {positions} positions, {a.threads} thread(s); pool of "
        f"{len(texts)} kept"
    )
    per = []
    for n in a.sizes:
        t0 = time.perf_counter()
        for _, _, states, lse in score_texts(lm, slot, teacher, texts[:n], positions, 16, ids):
            screening_scores(states, lse, residual)
        per.append((time.perf_counter() - t0) / n)
        print(f"  {n:4d} candidates: {per[-1] * n:7.2f} s, {per[-1]:.3f} s per candidate")
    print(f"  per-candidate time, largest pool / smallest: {per[-1] / per[0]:.2f} (1.00 = linear)")
    largest = max(len(shard(pool, i, a.shards)) for i in range(a.shards))
    print(
        f"  {a.shards} shards of the {len(texts)}-candidate pool: the largest holds {largest} "
        f"({largest / len(texts):.3f} of the work; ideal {1 / a.shards:.3f})"
    )


if __name__ == "__main__":
    main()
