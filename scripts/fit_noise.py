from softlens.config import settings
from softlens.decompose import PathSettings, run_noise
from softlens.workflow import caches, start_job

start_job(snakemake)
run_noise(
    caches=caches(snakemake),
    behavior=snakemake.wildcards.behavior,
    noise_sources=snakemake.params.noise,
    settings=settings(PathSettings, "poe", snakemake.params.poe),
    out=snakemake.output[0],
)
