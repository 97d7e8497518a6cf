from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
tables.weights(
    inputs=dict(snakemake.input.items()),
    behaviors=snakemake.params.behaviors,
    hand_written=snakemake.params.dictionary,
).to_csv(snakemake.output[0], index=False)
