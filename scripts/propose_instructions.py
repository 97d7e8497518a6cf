from softlens.discovery import proposer_model, run_proposals
from softlens.workflow import start_job

start_job(snakemake)
p = snakemake.params.proposer
run_proposals(proposer_model(p, snakemake.input.model), p, snakemake.params.model_settings, snakemake.output[0])
