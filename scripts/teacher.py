from softlens.teacher import run_teacher
from softlens.workflow import start_job

start_job(snakemake)
run_teacher(
    snakemake.input.model,
    snakemake.params.behavior,
    snakemake.params.messages,
    snakemake.params.model_settings,
    snakemake.params.teacher,
    snakemake.output[0],
    steering_file=snakemake.input.get("steering"),
)
