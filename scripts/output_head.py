from softlens.logprobs import run_head
from softlens.workflow import start_job

start_job(snakemake)
run_head(snakemake.input.model, snakemake.params.model_settings, snakemake.output[0])
