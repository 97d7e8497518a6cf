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


def library_calls_of_scripts():
    """(script, function) for every softlens function a workflow script calls."""
    import ast
    import importlib
    import inspect

    for script in sorted((ROOT / "scripts").glob("*.py")):
        tree = ast.parse(script.read_text())
        names = {
            a.asname or a.name: (node.module, a.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("softlens")
            for a in node.names
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            if isinstance(f, ast.Name) and f.id in names:
                module, name = names[f.id]
                obj = getattr(importlib.import_module(module), name)
            elif isinstance(f, ast.Attribute) and getattr(f.value, "id", None) in names:
                module, name = names[f.value.id]
                obj = getattr(importlib.import_module(f"{module}.{name}"), f.attr)
            else:
                continue
            if inspect.isfunction(obj):
                yield script.name, obj


def test_every_job_function_takes_at_most_six_parameters_by_keyword():
    import inspect

    calls = list(library_calls_of_scripts())
    assert len({f.__name__ for _, f in calls}) > 30
    for script, f in calls:
        params = [
            p
            for p in inspect.signature(f).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        required = [p for p in params if p.default is p.empty]
        positional = [p for p in required if p.kind is not p.KEYWORD_ONLY]
        assert len(params) <= 6, f"{script}: {f.__module__}.{f.__name__} takes {len(params)}"
        assert len(required) <= 2 or not positional, (
            f"{script}: {f.__module__}.{f.__name__} takes {[p.name for p in positional]} "
            "by position"
        )
