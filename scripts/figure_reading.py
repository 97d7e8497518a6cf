import pandas as pd

from softlens import figures
from softlens.workflow import start_job

start_job(snakemake)
i, o = snakemake.input, snakemake.output
figures.reading(table=pd.read_csv(i.reading), search=pd.read_csv(i.search), out=o.reading)
figures.geometry(pd.read_csv(i.geometry), o.geometry)
figures.robustness(pd.read_csv(i.robustness), o.robustness)
figures.verbalisation(pd.read_csv(i.verbalisation), o.verbalisation)
