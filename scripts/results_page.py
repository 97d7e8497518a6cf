from pathlib import Path

from softlens.io import atomic_path
from softlens.results_page import results_page
from softlens.workflow import start_job

start_job(snakemake)
page = results_page(
    tables={Path(t).stem: t for t in snakemake.input},
    configs=snakemake.params.configs,
    command="snakemake --cores all",
)
with atomic_path(snakemake.output[0]) as tmp:
    Path(tmp).write_text(page)
