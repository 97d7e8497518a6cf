from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
table, path = tables.phase1(fit_paths=snakemake.input)
table.to_csv(snakemake.output.table, index=False)
path.to_csv(snakemake.output.path, index=False)
