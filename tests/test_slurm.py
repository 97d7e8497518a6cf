"""The workflow on a real SLURM cluster: a single node brought up on this machine by
.ci/local-slurm.sh.

Jobs must really go through sbatch (SLURM job ids, finished in SLURM's own records) and produce
the same tables as a local run. Skipped, with the reason, where SLURM cannot be installed (not
root, no apt-get, no executor plugin). The daemons the test started are stopped afterwards; a
cluster that was already up is left as it was.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from snakemake_runs import snakemake, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

SCRIPT = ROOT / ".ci" / "local-slurm.sh"
TARGET = (
    "results/tables/phase0.csv"  # teachers, log-prob caches, PoE fits, a table: every kind of job
)


def why_not() -> str | None:
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[all,slurm]')"
    if shutil.which("sbatch") is None:
        if os.geteuid() != 0:
            return "SLURM is not installed and installing it needs root"
        if shutil.which("apt-get") is None:
            return "SLURM is not installed and there is no apt-get to install it"
    return None


def cluster_up() -> bool:
    return (
        subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout.count("UP") > 0
        if shutil.which("scontrol")
        else False
    )


@pytest.fixture(scope="module")
def cluster():
    reason = why_not()
    if reason:
        pytest.skip(reason)
    was_up = cluster_up()
    if not was_up:
        up = subprocess.run(
            [str(SCRIPT)],
            capture_output=True,
            text=True,
            env=dict(os.environ, SLURM_ACCOUNTING="none"),
        )
        assert up.returncode == 0, f"{SCRIPT} failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
    try:
        yield
    finally:
        if not was_up:
            subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True)


def slurm_overrides() -> list[str]:
    """The project's SLURM profile, fitted to a one-node test cluster: its one partition, small
    memory, one thread per job (the node has few cores; a job asking for more would wait
    forever).
    """
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    partition = subprocess.run(
        ["sinfo", "-h", "-o", "%R"], capture_output=True, text=True
    ).stdout.split()[0]
    rules = sorted(profile["set-resources"])
    return [
        "--profile",
        str(ROOT / "profiles" / "slurm"),
        "--jobs",
        "4",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--default-resources",
        f"slurm_partition={partition}",
        "mem_mb=1500",
        "runtime=20",
        "--set-resources",
        *[f"{r}:{k}" for r in rules for k in (f"slurm_partition={partition}", "mem_mb=1500")],
        "--set-threads",
        *[f"{r}=1" for r in profile.get("set-threads", {})],
    ]


def test_the_tiny_dag_runs_through_sbatch_and_matches_a_local_run(
    cluster, built, tmp_path, tiny_dir
):
    local, _ = built  # the same config, run locally
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    write_config(slurm, tiny_dir)
    res = snakemake(slurm, TARGET, *slurm_overrides())
    log = res.stdout + res.stderr

    job_ids = sorted(set(re.findall(r"SLURM jobid (\d+)", log)))
    assert len(job_ids) >= 5, (
        f"expected the model and fit jobs to go through sbatch:\n{log[-3000:]}"
    )
    for job in job_ids:  # SLURM's own record of each job (kept for MinJobAge after it ends)
        state = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True
        ).stdout
        assert "JobState=COMPLETED" in state, state

    a, b = (pd.read_csv(d / TARGET) for d in (local, slurm))
    # both run every job on one thread; a SLURM node's BLAS may still sum in another order, which
    # moves the
    # fits within the solver's tolerance (KKT to 1e-5 of lambda_max), not beyond
    pd.testing.assert_frame_equal(a, b, rtol=1e-3, atol=1e-4)
    assert (
        snakemake(slurm, TARGET, "--dry-run").stdout.count("rule ") == 0
    )  # and nothing left to do
