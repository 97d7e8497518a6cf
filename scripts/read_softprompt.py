from softlens.reading import run_reading
from softlens.workflow import model_job, soft_prompt, start_job

start_job(snakemake)
run_reading(
    job=model_job(snakemake),
    prompt=soft_prompt(snakemake),
    training=snakemake.params.training,
    reading=snakemake.params.reading,
    out=snakemake.output.stages,
    search_out=snakemake.output.search,
)
