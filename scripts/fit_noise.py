import pandas as pd

from softlens.decompose import PathSettings, run_noise
from softlens.workflow import start_job

start_job(snakemake)
run_noise(
    snakemake.params.cache_dir,
    snakemake.input.head,
    pd.DataFrame(snakemake.params.atoms),
    snakemake.wildcards.behavior,
    snakemake.params.noise,
    PathSettings(**snakemake.params.poe),
    snakemake.output[0],
)
