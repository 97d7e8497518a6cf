from softlens.reading import run_geometry
from softlens.workflow import soft_prompt_job, start_job

start_job(snakemake)
run_geometry(
    *soft_prompt_job(snakemake),
    snakemake.params.reading,
    snakemake.params.model_settings,
    snakemake.output.geometry,
    snakemake.output.robustness,
    steering_file=snakemake.input.get("steering"),
)
