from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
o = snakemake.output
outputs = tables.reading(inputs=dict(snakemake.input.items()))
for df, out in zip(outputs, [o.reading, o.search, o.geometry, o.robustness, o.verbalisation]):
    df.to_csv(out, index=False)
