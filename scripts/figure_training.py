import pandas as pd

from softlens import figures
from softlens.workflow import start_job

start_job(snakemake)
figures.training(pd.read_csv(snakemake.input.table), snakemake.output.closure)
figures.training_curves(pd.read_csv(snakemake.input.curves), snakemake.output.curves)
