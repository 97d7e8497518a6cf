from softlens.discovery import run_pool
from softlens.exclusion import ExclusionSettings
from softlens.workflow import start_job

start_job(snakemake)
i, p = snakemake.input, snakemake.params
run_pool(p.behavior, p.pool, ExclusionSettings(**p.exclusion), i.proposals, i.get("stages", []),
         i.get("verbalise", []), snakemake.output[0])
