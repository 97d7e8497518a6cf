from softlens.reading import run_reading
from softlens.workflow import soft_prompt_job, start_job

start_job(snakemake)
run_reading(
    *soft_prompt_job(snakemake),
    snakemake.params.reading,
    snakemake.params.model_settings,
    snakemake.output.stages,
    snakemake.output.search,
    steering_file=snakemake.input.get("steering"),
)
