from softlens.evaluation import run_evaluation
from softlens.workflow import model_job, soft_prompt, start_job

start_job(snakemake)
run_evaluation(
    job=model_job(snakemake),
    prompt=soft_prompt(snakemake),
    training=snakemake.params.training,
    max_new_tokens=snakemake.params.teacher["max_new_tokens"],
    out=snakemake.output.scores,
    samples_out=snakemake.output.samples,
)
