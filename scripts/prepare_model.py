from softlens.models import prepare_model
from softlens.workflow import start_job

start_job(snakemake)
prepare_model(
    spec=snakemake.params.spec,
    out_dir=snakemake.params.model_dir,
    manifest=snakemake.output.manifest,
    revision=snakemake.params.revision,
)
