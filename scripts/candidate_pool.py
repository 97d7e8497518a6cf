from softlens.discovery import run_pool
from softlens.workflow import start_job

start_job(snakemake)
i = snakemake.input
run_pool(snakemake.params.behavior, snakemake.params.pool, i.proposals, i.get("stages", []),
         i.get("verbalise", []), snakemake.output[0])
