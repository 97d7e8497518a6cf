import pandas as pd

from softlens import figures
from softlens.workflow import start_job

start_job(snakemake)
figures.weights(pd.read_csv(snakemake.input[0]), snakemake.output[0])
