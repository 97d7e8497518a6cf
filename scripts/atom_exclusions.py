import pandas as pd

from softlens.exclusion import ExclusionSettings, run_atom_exclusions
from softlens.workflow import start_job

start_job(snakemake)
p = snakemake.params
run_atom_exclusions(p.behavior, pd.DataFrame(p.atoms), ExclusionSettings(**p.exclusion), snakemake.output[0])
