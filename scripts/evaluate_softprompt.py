from softlens.evaluation import run_evaluation
from softlens.workflow import soft_prompt_job, start_job

start_job(snakemake)
run_evaluation(
    *soft_prompt_job(snakemake),
    snakemake.params.model_settings,
    snakemake.params.teacher,
    snakemake.output.scores,
    snakemake.output.samples,
    steering_file=snakemake.input.get("steering"),
)
