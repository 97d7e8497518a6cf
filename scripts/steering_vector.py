from softlens.steering import compute_steering_vector
from softlens.workflow import model_job, start_job

start_job(snakemake)
compute_steering_vector(job=model_job(snakemake), out=snakemake.output[0])
