from softlens.evaluation import run_evaluation
from softlens.workflow import start_job

start_job(snakemake)
run_evaluation(
    snakemake.input.model,
    snakemake.input.teacher,
    snakemake.input.prompt,
    snakemake.params.behavior,
    snakemake.wildcards.variant,
    int(snakemake.wildcards.seed),
    snakemake.params.training,
    snakemake.params.model_settings,
    snakemake.params.teacher,
    snakemake.output.scores,
    snakemake.output.samples,
    steering_file=snakemake.input.get("steering"),
)
