from softlens.activations import run_activations
from softlens.workflow import start_job

start_job(snakemake)
p = snakemake.params
run_activations(
    snakemake.input.model,
    p.messages,
    snakemake.input.instructions,
    p.layers,
    p.corpus,
    int(snakemake.wildcards.shard),
    p.model_settings,
    snakemake.output.store,
    snakemake.output.docs,
)
