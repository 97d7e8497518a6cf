"""Glue between Snakemake jobs and the library: logging and thread settings for thin scripts."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def start_job(snakemake) -> None:
    """Send stderr (logging, tqdm, warnings) to the rule's log and use the job's threads."""
    from .models import set_threads

    if snakemake.log:
        sys.stderr = open(snakemake.log[0], "w", buffering=1)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        force=True,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    set_threads(snakemake.threads)


def model_job(snakemake):
    """The job's ModelJob from what its rule declares: input model (and teacher, steering and
    cached targets where the rule has them), params model_settings (and behavior)."""
    from .job import ModelJob

    i, p = snakemake.input, snakemake.params
    return ModelJob(
        model=i.model,
        settings=p.model_settings,
        behavior=p.get("behavior"),
        teacher=i.get("teacher"),
        steering=i.get("steering"),
        targets=i.get("targets"),
    )


def soft_prompt(snakemake):
    """The SoftPrompt the job's wildcards name (behavior, variant, seed), at its input `prompt`."""
    from .job import SoftPrompt

    w = snakemake.wildcards
    return SoftPrompt(
        behavior=w.behavior, variant=w.variant, seed=int(w.seed), path=snakemake.input.get("prompt")
    )


def caches(snakemake, decomposed: str | None = None):
    """The Caches the rule declares: input head and caches, params atoms (with the behaviour's
    input exclusions where the rule has them); `decomposed` defaults to the behaviour's hard
    prompt."""
    import pandas as pd

    from .decompose import TARGET, Caches
    from .exclusion import with_exclusions

    i = snakemake.input
    atoms = pd.DataFrame(snakemake.params.atoms)
    if i.get("exclusions"):
        atoms = with_exclusions(atoms, i.exclusions)
    return Caches(head=i.head, files=tuple(i.caches), atoms=atoms, decomposed=decomposed or TARGET)


def machine_memory_mb(share: float = 0.9) -> int:
    """This machine's physical memory in MB, less a margin for the OS and Snakemake itself."""
    return int(share * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)


def gpus_for(setting: str = "auto") -> int:
    """GPUs a model job asks the scheduler for: none when the config pins the CPU or, with
    "auto", when this host shows no NVIDIA device (on SLURM, where the submit host may have none,
    set "cuda"). Read from the driver's files, not torch, so that building the DAG imports no
    torch."""
    if setting == "auto":
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1", "NoDevFiles")
        return int(
            not hidden
            and (
                any(Path("/proc/driver/nvidia/gpus").glob("*"))
                or any(Path("/dev").glob("nvidia[0-9]*"))
            )
        )
    return int(setting.split(":")[0] == "cuda")
