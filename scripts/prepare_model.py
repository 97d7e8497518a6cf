from softlens.models import prepare_model
from softlens.workflow import start_job

start_job(snakemake)
prepare_model(
    snakemake.params.spec,
    snakemake.params.model_dir,
    snakemake.output.manifest,
    revision=snakemake.params.revision,
)
