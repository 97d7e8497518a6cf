from softlens.config import prompt_key, settings
from softlens.decompose import PathSettings
from softlens.discovery import PursuitSettings, run_pursuit
from softlens.workflow import caches, model_job, start_job

start_job(snakemake)
w, p = snakemake.wildcards, snakemake.params
run_pursuit(
    job=model_job(snakemake),
    caches=caches(snakemake, decomposed=prompt_key(w.variant, w.seed, w.kind)),
    screens=snakemake.input.screens,
    settings=settings(
        PursuitSettings,
        "discovery.pursuit",
        p.pursuit,
        top=p.screen["top"],
        positions=p.positions,
        levels=tuple(p.exclusion["levels"]),
    ),
    path_settings=settings(PathSettings, "poe", p.poe),
    out=snakemake.output[0],
)
