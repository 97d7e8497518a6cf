from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
i, p = snakemake.input, snakemake.params
tables.recovery(
    i.fits + i.controls,
    i.pursuits,
    i.stages,
    i.verbalise,
    i.scores,
    i.pools,
    p.behaviors,
    p.dictionary,
).to_csv(snakemake.output[0], index=False)
