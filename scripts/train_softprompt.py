from softlens.training import run_training
from softlens.workflow import model_job, soft_prompt, start_job

start_job(snakemake)
run_training(
    job=model_job(snakemake),
    prompt=soft_prompt(snakemake),
    training=snakemake.params.training,
    out=snakemake.output.prompt,
    curve_out=snakemake.output.curve,
)
