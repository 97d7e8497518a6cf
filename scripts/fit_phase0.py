import pandas as pd

from softlens.decompose import PathSettings, run_phase0
from softlens.workflow import start_job

start_job(snakemake)
run_phase0(
    snakemake.params.cache_dir,
    pd.DataFrame(snakemake.params.atoms),
    snakemake.wildcards.behavior,
    PathSettings(**snakemake.params.poe),
    snakemake.output[0],
)
