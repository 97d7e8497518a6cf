from softlens.activations import run_activations
from softlens.workflow import model_job, start_job

start_job(snakemake)
p = snakemake.params
run_activations(
    job=model_job(snakemake),
    corpus={**p.corpus, "messages": p.messages, "instructions": snakemake.input.instructions},
    layers=p.layers,
    shard=int(snakemake.wildcards.shard),
    out=snakemake.output.store,
    docs_out=snakemake.output.docs,
)
