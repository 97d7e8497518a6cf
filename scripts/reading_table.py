from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
i, o = snakemake.input, snakemake.output
outputs = tables.reading(i.stages, i.search, i.geometry, i.robustness, i.verbalise, i.tokens)
for df, out in zip(outputs, [o.reading, o.search, o.geometry, o.robustness, o.verbalisation]):
    df.to_csv(out, index=False)
