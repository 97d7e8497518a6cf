from softlens.training import run_training
from softlens.workflow import start_job

start_job(snakemake)
run_training(
    snakemake.input.model,
    snakemake.input.teacher,
    snakemake.params.behavior,
    snakemake.wildcards.variant,
    int(snakemake.wildcards.seed),
    snakemake.params.training,
    snakemake.params.model_settings,
    snakemake.output.prompt,
    snakemake.output.curve,
    steering_file=snakemake.input.get("steering"),
)
