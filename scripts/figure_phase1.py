import pandas as pd

from softlens import figures
from softlens.workflow import start_job

start_job(snakemake)
figures.phase1(pd.read_csv(snakemake.input.table), snakemake.output.weights)
figures.phase1_path(pd.read_csv(snakemake.input.path), snakemake.output.path)
