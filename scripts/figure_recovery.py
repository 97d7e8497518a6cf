import pandas as pd

from softlens import figures
from softlens.workflow import start_job

start_job(snakemake)
figures.recovery(
    pd.read_csv(snakemake.input[0], keep_default_na=False, na_values=[""]), snakemake.output[0]
)
