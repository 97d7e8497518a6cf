import pandas as pd

from softlens import figures
from softlens.workflow import start_job

start_job(snakemake)
table = pd.read_csv(snakemake.input.sae)
figures.sae_errors(table, snakemake.output.errors)
figures.sae_jaccard(table, snakemake.output.jaccard)
