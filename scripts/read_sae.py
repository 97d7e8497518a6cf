from pathlib import Path

from softlens.sae_reading import run_sae_reading
from softlens.workflow import model_job, soft_prompt, start_job

start_job(snakemake)
run_sae_reading(
    job=model_job(snakemake),
    prompt=soft_prompt(snakemake),
    sae_dirs=[Path(f).parent for f in snakemake.input.saes],
    training=snakemake.params.training,
    random_draws=snakemake.params.random_draws,
    out=snakemake.output[0],
)
