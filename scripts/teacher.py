from softlens.teacher import run_teacher
from softlens.workflow import model_job, start_job

start_job(snakemake)
run_teacher(
    job=model_job(snakemake),
    messages=snakemake.params.messages,
    generation=snakemake.params.teacher,
    out=snakemake.output[0],
)
