from softlens.reading import run_verbalisation
from softlens.workflow import soft_prompt_job, start_job

start_job(snakemake)
run_verbalisation(
    *soft_prompt_job(snakemake),
    snakemake.params.reading,
    snakemake.params.model_settings,
    snakemake.output[0],
    steering_file=snakemake.input.get("steering"),
)
