from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
tables.phase05(fit_paths=snakemake.input).to_csv(snakemake.output[0], index=False)
