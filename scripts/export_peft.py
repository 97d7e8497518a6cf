from pathlib import Path

from softlens.io import export_peft
from softlens.models import model_path
from softlens.workflow import start_job

start_job(snakemake)
export_peft(
    prompt_path=snakemake.input.prompt,
    model_path=model_path(snakemake.input.model),
    adapter_dir=Path(snakemake.output.config).parent,
)
