import pandas as pd

from softlens.decompose import PathSettings, run_fit
from softlens.exclusion import with_exclusions
from softlens.workflow import start_job

start_job(snakemake)
p = snakemake.params
run_fit(
    p.cache_dir,
    snakemake.input.head,
    with_exclusions(pd.DataFrame(p.atoms), snakemake.input.exclusions),
    snakemake.wildcards.behavior,
    p.target,
    PathSettings(**p.poe),
    snakemake.output[0],
    levels=p.exclusion["levels"],
)
