from softlens.reading import run_geometry
from softlens.workflow import model_job, soft_prompt, start_job

start_job(snakemake)
run_geometry(
    job=model_job(snakemake),
    prompt=soft_prompt(snakemake),
    training=snakemake.params.training,
    reading=snakemake.params.reading,
    geometry_out=snakemake.output.geometry,
    robustness_out=snakemake.output.robustness,
)
