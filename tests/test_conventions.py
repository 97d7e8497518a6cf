"""The workflow stays lint-clean and snakefmt-formatted (checked in CI through the README's test
command)."""

import subprocess
import sys

from conftest import ROOT


def test_snakemake_lint_is_clean():
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_rules_are_snakefmt_formatted():
    res = subprocess.run(
        ["snakefmt", "--check", "Snakefile", "rules/"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


PYTHON = ["src", "scripts", "tests", "benchmarks"]


def test_python_is_ruff_clean_and_formatted():
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *PYTHON], cwd=ROOT, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", *PYTHON],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
