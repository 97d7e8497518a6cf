from softlens.reading import run_token_geometry
from softlens.workflow import start_job

start_job(snakemake)
run_token_geometry(snakemake.input.model, snakemake.params.reading, snakemake.params.model_settings, snakemake.output[0])
