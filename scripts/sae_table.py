from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
i, o = snakemake.input, snakemake.output
outputs = tables.sae(i.readings, i.features, i.contexts)
for df, out in zip(outputs, [o.sae, o.training, o.features, o.manifold]):
    df.to_csv(out, index=False)
