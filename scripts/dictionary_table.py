from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
o, p = snakemake.output, snakemake.params
outputs = tables.dictionary(
    inputs=dict(snakemake.input.items()), behaviors=p.behaviors, hand_written=p.dictionary
)
for df, out in zip(outputs, [o.table, o.path, o.atoms]):
    df.to_csv(out, index=False)
