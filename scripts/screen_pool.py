from softlens.config import settings
from softlens.discovery import ScreenSettings, run_screen
from softlens.workflow import caches, model_job, start_job

start_job(snakemake)
p = snakemake.params
run_screen(
    job=model_job(snakemake),
    caches=caches(snakemake),
    pool=snakemake.input.pool,
    fits=snakemake.input.fits,
    settings=settings(
        ScreenSettings,
        "discovery.screen",
        p.screen,
        shard=int(snakemake.wildcards.shard),
        positions=p.positions,
        seed=p.seed,
    ),
    out=snakemake.output[0],
)
