import pandas as pd

from softlens import figures
from softlens.workflow import start_job

start_job(snakemake)
i, o = snakemake.input, snakemake.output
figures.dictionary(pd.read_csv(i.table), pd.read_csv(i.path), o.curves)
figures.dictionary_atoms(pd.read_csv(i.atoms), o.atoms)
