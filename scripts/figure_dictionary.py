import pandas as pd

from softlens import figures
from softlens.workflow import start_job

start_job(snakemake)
i, o = snakemake.input, snakemake.output
figures.dictionary(table=pd.read_csv(i.table), path=pd.read_csv(i.path), out=o.curves)
figures.dictionary_atoms(pd.read_csv(i.atoms), o.atoms)
