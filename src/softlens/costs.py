"""Where the time goes: every job's Snakemake benchmark file gathered into one tidy table.

Benchmark files live under `logs/<model>/benchmarks/<stage>/...`; the stage is that first folder.
With `--benchmark-extended` (set in profiles/default and profiles/slurm) each file also names its
rule, its wildcards and its threads; without it the rule is the file's path and threads are 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["rule", "wildcards", "seconds", "max_rss_mb", "threads", "stage", "file"]


def read_benchmarks(bench_dir) -> pd.DataFrame:
    """One row per job (the latest run of each), columns COLUMNS; empty when nothing ran yet."""
    bench_dir = Path(bench_dir)
    rows = []
    for path in sorted(bench_dir.rglob("*.tsv")):
        rel = path.relative_to(bench_dir)
        t = pd.read_csv(path, sep="\t")
        if t.empty:
            continue
        last = t.iloc[
            -1
        ]  # a file holds one line per repeat; the last run is the one that made the output
        rss = pd.to_numeric(last.get("max_rss"), errors="coerce")
        rows.append(
            {
                "rule": last.get("rule_name", str(rel.with_suffix(""))),
                "wildcards": str(last.get("wildcards", "")),
                "seconds": float(last["s"]),
                "max_rss_mb": float(rss) if pd.notna(rss) else float("nan"),
                "threads": int(last.get("threads", 1)),
                "stage": rel.parts[0] if len(rel.parts) > 1 else rel.stem,
                "file": str(path),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def by_stage(costs: pd.DataFrame) -> pd.DataFrame:
    """Per stage: jobs, job-seconds (seconds x threads: core time), wall seconds summed, peak
    memory."""
    c = costs.assign(job_seconds=costs["seconds"] * costs["threads"])
    return (
        c.groupby("stage")
        .agg(
            jobs=("rule", "size"),
            job_seconds=("job_seconds", "sum"),
            seconds=("seconds", "sum"),
            max_rss_mb=("max_rss_mb", "max"),
        )
        .reset_index()
        .sort_values("job_seconds", ascending=False)
    )


def by_rule(costs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, the slowest job's seconds, and the largest peak memory (what a profile
    sizes)."""
    return (
        costs.groupby(["stage", "rule"])
        .agg(
            jobs=("seconds", "size"),
            max_seconds=("seconds", "max"),
            max_rss_mb=("max_rss_mb", "max"),
            threads=("threads", "max"),
        )
        .reset_index()
        .sort_values(["stage", "rule"])
    )


def profile_resources(
    per_rule: pd.DataFrame,
    *,
    memory_headroom: float = 1.5,
    time_headroom: float = 2.0,
    min_mb: int = 1000,
    min_minutes: int = 5,
) -> dict:
    """`set-resources` for a cluster profile sized from measured jobs: each rule's largest peak
    memory and slowest job, times a headroom, rounded up (MB to 500, minutes to 5). Sized for the
    model and config that were measured: rerun the workflow on a sample before scaling up."""
    out = {}
    for r in per_rule.itertuples():
        mem = (
            max(min_mb, int(np.ceil(memory_headroom * r.max_rss_mb / 500) * 500))
            if pd.notna(r.max_rss_mb)
            else min_mb
        )
        minutes = max(min_minutes, int(np.ceil(time_headroom * r.max_seconds / 60 / 5) * 5))
        out[r.rule] = {"mem_mb": mem, "runtime": minutes}
    return out
