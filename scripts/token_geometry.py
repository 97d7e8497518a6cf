from softlens.reading import run_token_geometry
from softlens.workflow import model_job, start_job

start_job(snakemake)
run_token_geometry(
    job=model_job(snakemake), reading=snakemake.params.reading, out=snakemake.output[0]
)
