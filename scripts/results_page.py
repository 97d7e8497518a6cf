from pathlib import Path

from softlens.io import atomic_path
from softlens.results_page import results_page, run_command
from softlens.workflow import start_job

start_job(snakemake)
configs = snakemake.params.configs
page = results_page(
    tables={Path(t).stem: t for t in snakemake.input},
    configs=configs,
    command=run_command(configs),
)
with atomic_path(snakemake.output[0]) as tmp:
    Path(tmp).write_text(page)
