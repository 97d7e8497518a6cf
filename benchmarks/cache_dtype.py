"""What float16 storage of log-prob caches does to fitted PoE weights and to disk size.

    python benchmarks/cache_dtype.py [behavior] [--threads 2]

Rescores the behaviour's dictionary in float32 from
the model and its teacher table (results/<model>/teacher/<behavior>.parquet), writes each source
both ways to a temporary folder, fits the Phase 0 path on both, and prints the differences.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from softlens.config import behavior as behavior_spec
from softlens.config import load_dictionary, model_tag
from softlens.decompose import PathSettings, dictionary_atoms, fit_path
from softlens.io import read_aligned, read_teacher, write_logprobs
from softlens.logprobs import content_for, score
from softlens.models import load_model
from softlens.slot import PromptSlot


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("behavior", nargs="?", default="spanish")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="config/config.yaml")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = yaml.safe_load(open(a.config))
    tag = model_tag(cfg["model"])
    spec = behavior_spec(cfg, a.behavior)
    atoms = dictionary_atoms(spec, load_dictionary(cfg["dictionary"]))
    lm = load_model(f"resources/models/{tag}.json", cfg.get("model_settings"))
    slot = PromptSlot.for_model(lm, cfg.get("model_settings", {}).get("slot"))
    teacher = read_teacher(f"results/{tag}/teacher/{a.behavior}.parquet")
    msgs, comps = list(teacher["user_message"]), [list(c) for c in teacher["completion_ids"]]
    T = cfg.get("logprobs", {}).get("positions", 6)
    sources = {"target": {"kind": "hard", "text": spec["instruction"]}, "unprompted": {"kind": "unprompted"}}
    sources |= {s: {"kind": "hard", "text": p} for s, p in zip(atoms["source"], atoms["prompt"]) if s != "target"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {"float16": 0, "float32": 0}
        for name, src in sources.items():
            logp, rows = score(lm, slot, content_for(src), msgs, comps, T, 16, desc=name)
            for dt in sizes:
                path = Path(tmp) / dt / f"{name}.parquet"
                write_logprobs(path, teacher, logp, rows, dt, {})
                sizes[dt] += path.stat().st_size
        print(f"scored {len(sources)} sources in {time.perf_counter() - t0:.0f} s")
        fits = {}
        for dt in sizes:
            keys, L = read_aligned([Path(tmp) / dt / f"{s}.parquet" for s in atoms["source"]]
                                   + [Path(tmp) / dt / "target.parquet", Path(tmp) / dt / "unprompted.parquet"])
            fits[dt] = fit_path(L[:-2], L[-2], L[-1], (keys["split"] == "train").to_numpy(), list(atoms["atom"]), PathSettings())
    a16, a32 = fits["float16"], fits["float32"]
    dw = np.abs(a16["weight"].to_numpy() - a32["weight"].to_numpy())
    w32 = a32.pivot(index="lambda_index", columns="atom", values="weight").to_numpy()
    per32 = a32.groupby("lambda_index")[["kl_train", "explained_kl_test"]].first()
    per16 = a16.groupby("lambda_index")[["kl_train", "explained_kl_test"]].first()
    result = {
        "behavior": a.behavior, "sources": len(sources), "rows": int(len(keys)), "vocab": int(L.shape[-1]),
        "mb_per_source_float16": sizes["float16"] / len(sources) / 2**20,
        "mb_per_source_float32": sizes["float32"] / len(sources) / 2**20,
        "disk_ratio_float16_over_float32": sizes["float16"] / sizes["float32"],
        "max_abs_weight_change": float(dw.max()),
        "max_weight_norm": float(np.linalg.norm(w32, axis=1).max()),
        "max_abs_kl_train_change": float((per16["kl_train"] - per32["kl_train"]).abs().max()),
        "max_abs_explained_kl_test_change": float((per16["explained_kl_test"] - per32["explained_kl_test"]).abs().max()),
        "lambdas": int(len(per32)),
    }
    for k, v in result.items():
        print(f"{k:>36}: {v:.3g}" if isinstance(v, float) else f"{k:>36}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
