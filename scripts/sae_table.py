from softlens import tables
from softlens.workflow import start_job

start_job(snakemake)
i, o = snakemake.input, snakemake.output
outputs = tables.sae(inputs=dict(i.items()))
for df, out in zip(outputs, [o.sae, o.training, o.features, o.manifold]):
    df.to_csv(out, index=False)
