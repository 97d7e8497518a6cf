import pandas as pd

from softlens.discovery import ScreenSettings, run_screen
from softlens.workflow import start_job

start_job(snakemake)
i, w, p = snakemake.input, snakemake.wildcards, snakemake.params
s = dict(p.screen)
run_screen(i.model, i.teacher, i.pool, p.targets, p.cache_dir, i.head, pd.DataFrame(p.atoms), int(w.shard),
           p.shards, ScreenSettings(messages=s["messages"], top=s["top"]), p.model_settings, p.positions, p.seed,
           snakemake.output[0])
