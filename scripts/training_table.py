from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
outputs = tables.training(snakemake.input.scores, snakemake.input.curves, snakemake.input.samples)
for df, out in zip(
    outputs,
    [
        snakemake.output.table,
        snakemake.output.frames,
        snakemake.output.curves,
        snakemake.output.samples,
    ],
):
    df.to_csv(out, index=False)
