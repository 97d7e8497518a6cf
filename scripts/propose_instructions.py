from softlens.discovery import proposer_model, run_proposals
from softlens.job import ModelJob
from softlens.workflow import start_job

start_job(snakemake)
p = snakemake.params.proposer
job = ModelJob(
    model=proposer_model(p, snakemake.input.model), settings=snakemake.params.model_settings
)
run_proposals(job=job, proposer=p, out=snakemake.output[0])
