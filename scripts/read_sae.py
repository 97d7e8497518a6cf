from pathlib import Path

from softlens.sae_reading import run_sae_reading
from softlens.workflow import start_job

start_job(snakemake)
w, p = snakemake.wildcards, snakemake.params
run_sae_reading(
    snakemake.input.model,
    snakemake.input.prompt,
    [Path(f).parent for f in snakemake.input.saes],
    p.behavior,
    w.variant,
    int(w.seed),
    p.training,
    p.reading,
    p.model_settings,
    snakemake.output[0],
)
