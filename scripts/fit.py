from softlens.config import settings
from softlens.decompose import PathSettings, run_fit
from softlens.workflow import caches, start_job

start_job(snakemake)
p = snakemake.params
run_fit(
    caches=caches(snakemake, decomposed=p.decomposed),
    behavior=snakemake.wildcards.behavior,
    settings=settings(PathSettings, "poe", p.poe),
    levels=p.exclusion["levels"],
    out=snakemake.output[0],
)
