import pandas as pd

from softlens.config import settings
from softlens.exclusion import ExclusionSettings, run_atom_exclusions
from softlens.workflow import start_job

start_job(snakemake)
p = snakemake.params
run_atom_exclusions(
    spec=p.behavior,
    atoms=pd.DataFrame(p.atoms),
    settings=settings(ExclusionSettings, "exclusion", p.exclusion),
    out=snakemake.output[0],
)
