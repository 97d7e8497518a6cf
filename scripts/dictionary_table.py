from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
i, o, p = snakemake.input, snakemake.output, snakemake.params
outputs = tables.dictionary(i.pursuits, i.fits, i.pools, p.behaviors, p.dictionary)
for df, out in zip(outputs, [o.table, o.path, o.atoms]):
    df.to_csv(out, index=False)
