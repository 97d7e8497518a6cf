from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
outputs = tables.training(inputs=dict(snakemake.input.items()))
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
