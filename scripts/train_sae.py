from pathlib import Path

from softlens.sae import run_train_sae
from softlens.workflow import start_job

start_job(snakemake)
o = snakemake.output
run_train_sae(
    snakemake.input.model,
    snakemake.input.shards,
    int(snakemake.wildcards.layer),
    snakemake.params.sae,
    Path(o.weights).parent,
    o.curve,
    o.features,
    o.contexts,
    snakemake.params.device,
)
