from softlens.config import settings
from softlens.discovery import run_pool
from softlens.exclusion import ExclusionSettings
from softlens.workflow import start_job

start_job(snakemake)
i, p = snakemake.input, snakemake.params
run_pool(
    spec=p.behavior,
    pool_cfg=p.pool,
    exclusion=settings(ExclusionSettings, "exclusion", p.exclusion),
    proposals=i.proposals,
    readings=list(i.get("stages", [])) + list(i.get("verbalise", [])),
    out=snakemake.output[0],
)
