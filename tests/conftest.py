from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from tiny import write_tiny_model  # noqa: E402

# SOFTLENS_TEST_DEVICE=cuda runs the model tests on a GPU (the same assertions, the CUDA code
# paths).
DEVICE = os.environ.get("SOFTLENS_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def sharp_dir(tmp_path_factory) -> Path:
    """The tiny model with larger weights: its outputs depend on the prompt (KL ~1 nat), so a
    soft prompt has something to learn."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "sharp-llama", init_range=0.2)


@pytest.fixture(scope="session")
def sharp_lm(sharp_dir):
    from softlens.models import load_model

    return load_model(sharp_dir, {"device": DEVICE, "dtype": "float32"})


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    from softlens.models import load_model

    return load_model(tiny_dir, {"device": DEVICE, "dtype": "float32"})


@pytest.fixture
def default_config() -> dict:
    """The shipped config, with file paths made absolute (tests run from anywhere)."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["messages"]["file"] = str(ROOT / cfg["messages"]["file"])
    cfg["dictionary"]["file"] = str(ROOT / cfg["dictionary"]["file"])
    cfg["sae"]["corpus"]["instructions"] = str(ROOT / cfg["sae"]["corpus"]["instructions"])
    return copy.deepcopy(cfg)


@pytest.fixture
def schema() -> Path:
    from softlens.config import SCHEMA

    return SCHEMA


@pytest.fixture(scope="session")
def built(tmp_path_factory, tiny_dir):
    """One complete run of the tiny workflow (workdir, config), shared by the tests that read or
    replan it."""
    from snakemake_runs import snakemake, write_config

    workdir = tmp_path_factory.mktemp("run")
    cfg = write_config(workdir, tiny_dir)
    snakemake(workdir)
    return workdir, cfg
