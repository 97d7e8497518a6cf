"""The results page shows the tables' numbers, each with its interval, and only the tables that
exist."""

import pandas as pd

from softlens.results_page import results_page, run_command, run_configs


def test_the_page_reads_every_number_from_its_table(tmp_path):
    training = pd.DataFrame(
        {
            "behavior": ["spanish"],
            "variant": ["prepend"],
            "seed": [0],
            "kl_closure_test": [0.91234],
            "ci_low": [0.895],
            "ci_high": [0.92249],
            "kl_closure_test_bare": [0.9],
            "steps": [20],
        }
    )
    phase0 = pd.DataFrame(
        {
            "behavior": "spanish",
            "exclusion": ["none"] * 3,
            "atom": ["spanish", "french", "pirate"],
            "weight": [0.95, 0.0, -0.2],
            "explained_kl_test": 0.998,
            "ci_low": 0.997,
            "ci_high": 0.999,
            "nnz": 2,
            "target_closure_test": 1.0,
        }
    )
    training.to_csv(tmp_path / "training.csv", index=False)
    phase0.to_csv(tmp_path / "phase0.csv", index=False)
    page = results_page(
        tables={p.stem: p for p in tmp_path.glob("*.csv")},
        configs=["config/x.yaml"],
        command="snakemake --cores all",
    )
    assert "`config/x.yaml`" in page and "`snakemake --cores all`" in page
    assert "0.912 [0.895, 0.922]" in page
    assert (
        "spanish +0.95, pirate -0.20" in page and "french" not in page
    )  # nonzero weights only, by |weight|
    assert "recovery.csv" not in page  # absent tables: no section


def test_the_page_names_each_config_once_relative_to_the_run_and_the_command_that_makes_it(
    tmp_path,
):
    (tmp_path / "config").mkdir()
    # Snakemake lists each --configfile as given, then the Snakefile's own config file
    given = [str(tmp_path / "config/config.yaml"), "config/instructions.yaml", "config/config.yaml"]
    configs = run_configs(given, workdir=tmp_path)
    assert configs == ["config/config.yaml", "config/instructions.yaml"]
    assert run_command(configs) == (
        "snakemake --cores all --configfile config/config.yaml config/instructions.yaml"
    )
    assert run_command(run_configs(["config/config.yaml"], workdir=tmp_path)) == (
        "snakemake --cores all"
    )
    assert run_configs(["/elsewhere/x.yaml"], workdir=tmp_path) == ["/elsewhere/x.yaml"]
