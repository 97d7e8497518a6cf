import pandas as pd

from softlens.decompose import PathSettings, run_fit
from softlens.workflow import start_job

start_job(snakemake)
run_fit(
    snakemake.params.cache_dir,
    snakemake.input.head,
    pd.DataFrame(snakemake.params.atoms),
    snakemake.wildcards.behavior,
    snakemake.params.target,
    PathSettings(**snakemake.params.poe),
    snakemake.output[0],
)
