from pathlib import Path

from softlens.io import export_peft
from softlens.workflow import start_job

start_job(snakemake)
export_peft(snakemake.input.prompt, snakemake.input.model, Path(snakemake.output.config).parent)
