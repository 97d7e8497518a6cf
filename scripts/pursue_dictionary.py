import pandas as pd

from softlens.config import prompt_key
from softlens.decompose import PathSettings
from softlens.discovery import PursuitSettings, ScreenSettings, run_pursuit
from softlens.exclusion import with_exclusions
from softlens.workflow import start_job

start_job(snakemake)
i, w, p = snakemake.input, snakemake.wildcards, snakemake.params
s = dict(p.screen)
run_pursuit(i.model, i.teacher, i.screens, i.pool, p.cache_dir, i.head,
            with_exclusions(pd.DataFrame(p.atoms), i.exclusions), w.behavior, prompt_key(w.variant, w.seed, w.kind),
            ScreenSettings(messages=s["messages"], top=s["top"]), PursuitSettings(**p.pursuit),
            PathSettings(**p.poe), p.model_settings, p.positions, snakemake.output[0],
            levels=p.exclusion["levels"])
