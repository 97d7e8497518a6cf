from softlens.sae import run_train_sae
from softlens.workflow import start_job

start_job(snakemake)
run_train_sae(
    model=snakemake.input.model,
    shards=snakemake.input.shards,
    layer=int(snakemake.wildcards.layer),
    sae_cfg=snakemake.params.sae,
    device_setting=snakemake.params.device,
    outputs=dict(snakemake.output.items()),
)
