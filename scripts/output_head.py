from softlens.logprobs import run_head
from softlens.workflow import start_job

start_job(snakemake)
run_head(
    model=snakemake.input.model, settings=snakemake.params.model_settings, out=snakemake.output[0]
)
