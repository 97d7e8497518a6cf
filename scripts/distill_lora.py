from pathlib import Path

from softlens.config import settings
from softlens.distill import DistillSettings, distill_lora
from softlens.io import atomic_path
from softlens.job import ModelJob
from softlens.workflow import start_job

start_job(snakemake)
i, p, o = snakemake.input, snakemake.params, snakemake.output
job = ModelJob(
    model=i.model,
    settings=p.model_settings,
    behavior=p.source,
    teacher=i.teacher,
    targets=i.targets,
)
curve = distill_lora(
    job=job,
    settings=settings(DistillSettings, "distill", p.distill),
    out_dir=Path(o.adapter).parent,
)
with atomic_path(o.curve) as tmp:
    curve.to_csv(tmp, index=False)
