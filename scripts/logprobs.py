from softlens.logprobs import run_sources
from softlens.workflow import start_job

start_job(snakemake)
sources = snakemake.params.sources
run_sources(
    snakemake.input.model,
    snakemake.input.teacher,
    sources,
    dict(zip(sources, snakemake.output)),
    snakemake.params.model_settings,
    positions=snakemake.params.logprobs["positions"],
    steering_file=snakemake.input.get("steering"),
)
