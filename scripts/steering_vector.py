from softlens.steering import compute_steering_vector
from softlens.workflow import start_job

start_job(snakemake)
compute_steering_vector(
    snakemake.input.model,
    snakemake.params.behavior,
    snakemake.params.model_settings,
    snakemake.output[0],
)
