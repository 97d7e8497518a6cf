from softlens.logprobs import run_sources
from softlens.workflow import model_job, start_job

start_job(snakemake)
sources = snakemake.params.sources
run_sources(
    job=model_job(snakemake),
    sources=sources,
    outputs=dict(zip(sources, snakemake.output)),
    positions=snakemake.params.logprobs["positions"],
)
