"""The workflow through real `snakemake` calls on the tiny model: build, no-op rerun, targeted
rerun."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from snakemake_runs import MESSAGES, planned, snakemake, write_config
from softlens.io import read_soft_prompt

pytestmark = pytest.mark.workflow


def test_run_builds_phase0_and_phase05_tables_and_figures(built):
    workdir, _ = built
    phase0 = pd.read_csv(workdir / "results/tables/phase0.csv")
    assert {
        "behavior",
        "dictionary",
        "atom",
        "weight",
        "is_target",
        "explained_kl_test",
        "ci_low",
        "ci_high",
        "explained_kl_cv",
        "exclusion",
    } <= set(phase0.columns)
    assert set(phase0["behavior"]) == {
        "spanish",
        "concise",
        "pirate",
    }  # the steered teacher is decomposed too
    assert set(phase0["exclusion"]) == {"none", "lexical", "semantic", "reveal"}
    instructed = phase0[phase0["behavior"] != "pirate"]
    for _, g in instructed[instructed["exclusion"] == "none"].groupby("behavior"):
        top = g.loc[g["weight"].idxmax()]
        assert top["is_target"] and top["weight"] >= 0.9 and g["explained_kl_test"].iloc[0] >= 0.99
    assert not phase0[phase0["exclusion"] != "none"]["is_target"].any()
    assert (phase0["ci_low"] <= phase0["explained_kl_test"] + 1e-12).all()
    assert (phase0["explained_kl_test"] <= phase0["ci_high"] + 1e-12).all()
    spanish = phase0[phase0["behavior"] == "spanish"].groupby("exclusion")["excluded_atoms"].first()
    assert "spanish" in spanish["lexical"] and "spanish" not in str(spanish["none"])
    phase05 = pd.read_csv(workdir / "results/tables/phase05.csv")
    assert {
        "behavior",
        "sigma",
        "seed",
        "kl_noisy_clean",
        "kl_noisy_base",
        "explained_kl_test",
    } <= set(phase05.columns)
    assert len(phase05) == 3 * 2 and set(phase05["verdict"]) <= {"smooth", "phase transition"}
    for fig in ["phase0", "phase05"]:
        assert (workdir / f"results/figures/{fig}.png").read_bytes()[:4] == b"\x89PNG"


def test_run_trains_evaluates_decomposes_and_exports_every_soft_prompt(built, tiny_dir):
    workdir, _ = built
    tag = tiny_dir.name
    training = pd.read_csv(workdir / "results/tables/training.csv")
    assert {"behavior", "variant", "seed", "kl_closure_test"} <= set(training.columns)
    assert len(training) == 2 * 2 * 2 and training["kl_closure_test"].notna().all()
    frames = pd.read_csv(workdir / "results/tables/training_frames.csv", keep_default_na=False)
    assert set(frames["frame"]) == {"___", "Be ___.", "___."}  # the bare slot is always evaluated
    curves = pd.read_csv(workdir / "results/tables/training_curves.csv")
    assert set(curves.groupby(["behavior", "variant", "seed"])["step"].max()) == {4}
    phase1 = pd.read_csv(workdir / "results/tables/phase1.csv")
    assert {
        "behavior",
        "variant",
        "seed",
        "atom",
        "weight",
        "is_target",
        "explained_kl_test",
        "ci_low",
        "ci_high",
        "exclusion",
    } <= set(phase1.columns)
    assert set(phase1["behavior"]) == {"spanish", "pirate"}
    assert set(phase1["exclusion"]) == {"none", "lexical", "semantic", "reveal"}
    assert not phase1.loc[
        (phase1["behavior"] == "spanish") & (phase1["exclusion"] != "none"), "is_target"
    ].any()
    assert (
        phase1.loc[phase1["behavior"] == "pirate", "excluded_atoms"].isna().all()
    )  # no instruction to leave out
    for fig in ["training", "training_curves", "phase1", "phase1_path"]:
        assert (workdir / f"results/figures/{fig}.png").read_bytes()[:4] == b"\x89PNG"
    adapter = workdir / f"results/{tag}/peft/spanish/prepend-seed1"
    assert (adapter / "adapter_config.json").exists() and (
        adapter / "adapter_model.safetensors"
    ).exists()
    assert not list(
        (workdir / f"results/{tag}/softprompt").rglob("*.ckpt")
    )  # removed once a run finishes


def test_run_reads_every_soft_prompt_projection_repair_geometry_robustness_verbalisation(built):
    workdir, _ = built
    tables = workdir / "results/tables"
    reading = pd.read_csv(tables / "reading.csv", keep_default_na=False)
    assert {"behavior", "variant", "seed", "stage", "kl_closure_test", "text"} <= set(
        reading.columns
    )
    assert len(reading) == 2 * 2 * 1 * 5  # behaviours x variants x seeds x stages
    assert set(reading["stage"]) == {
        "soft",
        "projected_cosine",
        "projected_l2",
        "repaired",
        "pure_hotflip",
    }
    assert (reading.loc[reading["stage"] != "soft", "text"] != "").all()
    soft = reading[reading["stage"] == "soft"].set_index(["behavior", "variant", "seed"])[
        "kl_closure_test"
    ]
    training = pd.read_csv(tables / "training.csv").set_index(["behavior", "variant", "seed"])[
        "kl_closure_test"
    ]
    assert (
        (soft - training.loc[soft.index]).abs() < 1e-6
    ).all()  # the soft stage is the training evaluation
    search = pd.read_csv(tables / "reading_search.csv")
    assert set(search["search"]) == {"repaired", "pure_hotflip"} and set(search["step"]) == {
        0,
        1,
        2,
    }
    assert search.groupby(["behavior", "variant", "seed", "search"])["selected"].sum().eq(1).all()
    geometry = pd.read_csv(tables / "geometry.csv")
    assert (
        set(geometry["kind"]) == {"soft", "natural"} and (geometry["kind"] == "natural").sum() == 64
    )
    robustness = pd.read_csv(tables / "robustness.csv")
    assert set(robustness.loc[robustness["behavior"] == "spanish", "target"]) == {"soft", "natural"}
    assert set(robustness.loc[robustness["behavior"] == "pirate", "target"]) == {
        "soft"
    }  # no instruction
    natural = robustness[robustness["target"] == "natural"].set_index(["perturbation", "amount"])[
        "kl_closure_test"
    ]
    assert (
        natural.loc[("magnitude", 1.0)] - 1
    ).abs().max() < 1e-3  # the unperturbed instruction is the teacher (read from its cache: KL
    # to it is float32 rounding, ~1e-7, against the tiny model's KL(teacher || unprompted) ~1e-4)
    assert (
        natural.loc[("rotation", 0.0)] - 1
    ).abs().max() < 1e-2  # the same up to rounding in the rotation
    verbal = pd.read_csv(tables / "verbalisation.csv")
    assert verbal.groupby(["behavior", "variant", "seed"])["is_best"].sum().eq(1).all()
    # test scores only the candidate train chose
    assert verbal["kl_closure_test"].notna().eq(verbal["is_best"]).all()
    assert verbal["kl_closure_train"].notna().any()
    for fig in ["reading", "geometry", "robustness", "verbalisation"]:
        assert (workdir / f"results/figures/{fig}.png").read_bytes()[:4] == b"\x89PNG"


def test_run_discovers_dictionaries_from_a_pool_screened_in_shards(built, tiny_dir):
    workdir, cfg = built
    tag, tables = tiny_dir.name, workdir / "results/tables"
    pool = pd.read_parquet(workdir / f"results/{tag}/discovery/spanish/pool.parquet")
    assert {"templated", "generated", "verbalised", "repaired"} <= set(pool["kind"])
    kept = pool[pool["removed"] == ""]
    own = kept["text"].str.casefold().str.contains("respond in spanish", regex=False)
    assert (
        own.any() and (kept.loc[own, "excluded_at"] == "lexical").all()
    )  # in the pool, out of reach but at none
    giveaway = kept["text"].str.casefold().str.contains("spanish") & (kept["excluded_at"] == "")
    assert not giveaway.any()  # every other "spanish" is excluded at some level
    screens = pd.concat(
        [
            pd.read_parquet(workdir / f"results/{tag}/discovery/spanish/screen-{i}.parquet")
            for i in range(2)
        ]
    )
    for _, part in screens.groupby(
        "target"
    ):  # the shards cover the pool once, for every soft prompt
        assert sorted(part["candidate"]) == sorted(kept["candidate"])
    assert screens["target"].nunique() == 2 * 2 * 2  # every soft prompt and its random control
    table = pd.read_csv(tables / "dictionary.csv")
    assert {
        "behavior",
        "variant",
        "seed",
        "dictionary_kind",
        "n_candidates",
        "nnz",
        "explained_kl_test",
        "ci_low",
        "ci_high",
        "explained_kl_cv",
        "exclusion",
        "semantic_similarity",
        "random_similarity",
    } <= set(table.columns)
    assert (
        len(table) == 2 * 2 * 3 * 4
    )  # variants x seeds x (hand-written, generated, discovered) x levels
    assert (
        table["semantic_similarity"].between(-1, 1).all()
        and table["random_similarity"].between(-1, 1).all()
    )
    found = table[table["dictionary_kind"] == "discovered"].set_index("exclusion")
    assert (
        found.loc["none", "n_candidates"] == len(kept) + 36
    ).all()  # the pool and the whole hand-written list
    lexical = (~kept["excluded_at"].isin(["lexical"])).sum()
    assert (
        found.loc["lexical", "n_candidates"] == lexical + 35
    ).all()  # both without the instruction
    atoms = pd.read_csv(tables / "dictionary_atoms.csv")
    assert (
        not atoms.loc[atoms["exclusion"] != "none", "text"]
        .str.casefold()
        .str.contains("respond in spanish")
        .any()
    )
    path = pd.read_csv(tables / "dictionary_path.csv")
    assert set(path["dictionary_kind"]) == {"hand-written", "generated", "discovered"}
    recovery = pd.read_csv(tables / "recovery.csv")
    assert {
        "behavior",
        "variant",
        "seed",
        "reader",
        "exclusion",
        "text",
        "plugin_closure_test",
        "ci_low",
        "ci_high",
        "fraction_of_soft",
        "similarity",
        "similarity_percentile",
    } <= set(recovery.columns)
    assert {"control", "compared_to", "prompt_closure_test"} <= set(recovery.columns)
    assert set(recovery["control"]) == {"none", "random_prompt", "other_instruction"}
    spanish = recovery[(recovery["behavior"] == "spanish") & (recovery["control"] == "none")]
    assert set(spanish["reader"]) == {
        "poe_top_atom",
        "pursuit_best_single",
        "pursuit_top_atom",
        "pursuit_combination",
        "repaired",
        "verbalisation",
    }
    combined = spanish[spanish["reader"] == "pursuit_combination"]
    assert set(combined["exclusion"]) == {"none", "lexical", "semantic", "reveal"}
    assert spanish["similarity_percentile"].between(0, 1).all()
    assert (spanish["compared_to"] == "Respond in Spanish.").all()
    own = recovery[recovery["control"] == "none"]
    assert own.loc[own["behavior"] == "pirate", "similarity"].isna().all()  # no hidden instruction
    # each teacher's own decomposition is read too: the steered one's included
    teacher = own[own["variant"] == "teacher"]
    assert set(teacher["behavior"]) == {"spanish", "concise", "pirate"}
    assert set(teacher["reader"]) == {"poe_top_atom"} and (teacher["seed"] == 0).all()
    assert set(teacher["exclusion"]) == {"none", "lexical", "semantic", "reveal"}
    answer = teacher[teacher["behavior"] == "spanish"].set_index("exclusion")
    assert answer.loc["none", "text"] == "Respond in Spanish."  # Phase 0's top atom, asserted above
    assert answer.loc["none", "plugin_closure_test"] == pytest.approx(1, abs=1e-4)
    assert answer.loc["none", "soft_closure_test"] == pytest.approx(1, abs=1e-4)
    assert answer.loc["lexical", "text"] != "Respond in Spanish."
    # the controls: a norm-matched random prompt for each discovered soft prompt, read by the PoE
    # fit,
    # and every trained prompt's answers against another behaviour's instruction
    random = recovery[recovery["control"] == "random_prompt"]
    assert set(random["behavior"]) == {"spanish"}
    assert "pursuit_best_single" in set(random["reader"])  # discovered too (discovery.controls)
    assert set(random["reader"]) <= {
        "poe_top_atom",
        "pursuit_best_single",
        "pursuit_top_atom",
        "pursuit_combination",
    }
    assert len(random[["variant", "seed"]].drop_duplicates()) == 2 * 2
    # its own closure is its own (the tiny model's 4-step prompts are no better than chance, so no
    # ordering)
    trained = spanish.groupby(["variant", "seed"])["prompt_closure_test"].first()
    control = random.groupby(["variant", "seed"])["prompt_closure_test"].first()
    assert control.notna().all() and ((control - trained.loc[control.index]).abs() > 1e-6).all()
    phase1 = pd.read_csv(tables / "phase1.csv")
    assert set(phase1["prompt_kind"]) == {"soft", "control"}
    assert set(phase1.loc[phase1["prompt_kind"] == "control", "behavior"]) == {"spanish"}
    other = recovery[recovery["control"] == "other_instruction"]
    assert (other["compared_to"] != "").all() and other["similarity_percentile"].between(0, 1).all()
    assert set(other.loc[other["behavior"] == "spanish", "compared_to"]) == {"Be concise."}
    assert (workdir / "results/figures/recovery.png").read_bytes()[:4] == b"\x89PNG"
    for fig in ["dictionary", "dictionary_atoms"]:
        assert (workdir / f"results/figures/{fig}.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / f"logs/{tag}/benchmarks/discovery/spanish/screen-1.tsv").exists()


def test_run_trains_an_sae_per_layer_and_reads_every_soft_prompt_through_them(built, tiny_dir):
    workdir, cfg = built
    tag, tables = tiny_dir.name, workdir / "results/tables"
    layers = [
        1,
        2,
        3,
    ]  # n/4, n/2, 3n/4 of the tiny model's 4 blocks, resolved once the model is prepared
    tokens = sum(
        int(
            pd.read_parquet(workdir / f"results/{tag}/sae/activations/shard-{i}.docs.parquet")[
                "n_tokens"
            ].sum()
        )
        for i in range(2)
    )
    assert tokens >= 400
    training = pd.read_csv(tables / "sae_training.csv")
    assert list(training["layer"]) == layers
    assert (training["d_sae"] == 8 * training["d_in"]).all() and training["dead_fraction"].between(
        0, 1
    ).all()
    assert (training["fvu"] > 0).all()
    table = pd.read_csv(tables / "sae.csv")
    assert {
        "behavior",
        "variant",
        "layer",
        "recon_error",
        "baseline_recon_error",
        "jaccard_with_instruction",
    } <= set(table.columns)
    # every soft prompt (2 behaviours x 2 variants x 2 seeds) at every layer, contextualised in each
    # frame
    assert len(table) == 2 * 2 * len(layers) * (1 + len(cfg["training"]["frames"]))
    assert table.loc[table["behavior"] == "spanish", "jaccard_with_instruction"].between(0, 1).all()
    assert (
        table.loc[table["behavior"] == "pirate", "jaccard_with_instruction"].isna().all()
    )  # no instruction
    manifold = pd.read_csv(tables / "sae_manifold.csv")
    assert set(manifold["closer_to_manifold"]) <= {"prepend", "contextualised", "mixed"}
    assert len(manifold) == 2 * len(layers) and manifold["middle_layer"].sum() == 2
    features = pd.read_csv(tables / "sae_features.csv")
    assert set(features["behavior"]) <= {"spanish"}
    for fig in ["sae", "sae_jaccard"]:
        assert (workdir / f"results/figures/{fig}.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / f"logs/{tag}/benchmarks/sae/layer2.tsv").exists()


def test_tuning_the_search_replans_only_the_searches(built, tiny_dir):
    workdir, cfg = built
    more = {
        **cfg,
        "reading": {**cfg["reading"], "search": {**cfg["reading"]["search"], "steps": 3}},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(more))
    try:
        plan = planned(workdir)
    finally:
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = {p for p in plan if "/reading/" in p}
    assert jobs and all(p.endswith((".stages.parquet", ".search.csv")) for p in jobs), jobs
    assert not [p for p in plan if "/softprompt/" in p or "/teacher/" in p]


def test_changing_the_pursuits_top_replans_the_pursuits_not_the_screens(built):
    workdir, cfg = built
    discovery = cfg["discovery"]
    other = {
        **cfg,
        "discovery": {**discovery, "screen": {**discovery["screen"], "top": 2}},
    }
    assert discovery["screen"]["top"] != 2
    (workdir / "config.yaml").write_text(yaml.safe_dump(other))
    try:
        plan = planned(workdir)
    finally:
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = [p for p in plan if "/discovery/" in p]
    assert jobs and not [p for p in jobs if "/screen-" in p or p.endswith("pool.parquet")], jobs
    assert not [p for p in plan if "/softprompt/" in p or "/logprobs/" in p or "/teacher/" in p]


def test_run_builds_every_teacher_table(built, tiny_dir):
    workdir, cfg = built
    tag = tiny_dir.name
    for name in ["spanish", "concise", "pirate", "unprompted"]:
        df = pd.read_parquet(workdir / f"results/{tag}/teacher/{name}.parquet")
        assert list(df.columns[:6]) == [
            "behavior",
            "split",
            "message_id",
            "user_message",
            "completion",
            "completion_ids",
        ]
        assert (
            len(df) == len(MESSAGES)
            and set(df["split"]) == {"train", "test"}
            and (df["behavior"] == name).all()
        )
        assert df["completion_ids"].map(len).between(1, 6).all()
        assert (workdir / f"logs/{tag}/teacher/{name}.log").exists()
        assert (workdir / f"logs/{tag}/benchmarks/teacher/{name}.tsv").exists()
    steer = pd.read_parquet(workdir / f"results/{tag}/teacher/pirate.parquet")
    base = pd.read_parquet(workdir / f"results/{tag}/teacher/unprompted.parquet")
    assert list(steer["completion"]) != list(
        base["completion"]
    )  # the steering vector changes what it says


def test_complete_run_plans_nothing(built):
    workdir, _ = built
    assert planned(workdir) == []


def test_editing_one_instruction_replans_only_that_behaviours_branch(built, tiny_dir):
    workdir, cfg = built
    # another prompt of the dictionary (one it lacks would need a new behaviour name: atom 'concise'
    # is taken)
    cfg["behaviors"][1]["instruction"] = "Answer in one sentence."
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    try:
        plan = planned(workdir)
    finally:
        cfg["behaviors"][1]["instruction"] = "Be concise."
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert [p for p in plan if "/teacher/" in p] == [
        f"results/{tiny_dir.name}/teacher/concise.parquet"
    ]
    assert not [p for p in plan if "/spanish" in p or "/pirate" in p]
    assert f"results/{tiny_dir.name}/fits/concise/target.parquet" in plan
    assert planned(workdir) == []


def test_changing_the_dictionary_replans_caches_and_fits_but_no_teacher(built, tiny_dir):
    workdir, _ = built
    path = workdir / "dictionary.tsv"
    original, stat = path.read_text(), path.stat()
    path.write_text(original + "haiku\tformat\tAnswer with a haiku.\n")
    try:
        plan = planned(workdir)
    finally:
        path.write_text(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not [
        p
        for p in plan
        if "/teacher/" in p
        or "/steering/" in p
        or "/softprompt/" in p
        or "/reading/" in p
        or "/sae/" in p
    ]  # the SAE corpus has its own instruction file
    assert f"results/{tiny_dir.name}/logprobs/spanish/atom-haiku.parquet" in plan
    assert f"results/{tiny_dir.name}/fits/spanish/soft-contextualised-seed1.parquet" in plan
    assert {
        f"results/{tiny_dir.name}/fits/spanish/target.parquet",
        "results/tables/phase0.csv",
    } <= set(plan)


def test_invalid_config_fails_before_any_rule_runs(tmp_path, tiny_dir):
    write_config(
        tmp_path,
        tiny_dir,
        behaviors=[{"name": "a", "instruction": "Hi."}, {"name": "a", "instruction": "Yo."}],
    )
    res = snakemake(tmp_path, check=False)
    assert res.returncode != 0
    assert "duplicate behaviour name 'a'" in res.stderr + res.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()
    # a key written twice in the file: YAML alone would keep the second silently
    write_config(tmp_path, tiny_dir)
    with open(tmp_path / "config.yaml", "a") as f:
        f.write("teacher:\n  max_new_tokens: 7\n")
    res = snakemake(tmp_path, check=False)
    assert res.returncode != 0
    assert "config.yaml: key 'teacher' is written twice" in res.stderr + res.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_a_run_killed_mid_job_finishes_with_rerun_incomplete_and_loses_nothing(
    built, tmp_path, tiny_dir
):
    """SIGKILL the whole snakemake process group while a log-prob job is running, then rerun."""
    workdir, _ = built
    write_config(tmp_path, tiny_dir)
    # two cores, as `built` had: the same threads give the same numbers
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--cores",
        "2",
        "results/tables/phase0.csv",
    ]
    run = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
        start_new_session=True,
    )
    started = tmp_path / f"logs/{tiny_dir.name}/logprobs/spanish/dictionary.log"
    deadline = time.monotonic() + 600
    while not started.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert started.exists() and run.returncode == -signal.SIGKILL, (
        "the run ended before the job under test started"
    )
    incomplete = tmp_path / ".snakemake" / "incomplete"
    assert incomplete.is_dir() and any(
        incomplete.iterdir()
    )  # snakemake's record of the job cut short

    snakemake(tmp_path, "--unlock")  # a SIGKILLed snakemake cannot release its lock
    snakemake(tmp_path, "results/tables/phase0.csv", "--rerun-incomplete")
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "results/tables/phase0.csv"),
        pd.read_csv(workdir / "results/tables/phase0.csv"),
    )
    assert not any(incomplete.iterdir())


def test_the_report_renders_every_figure_with_its_caption(built):
    workdir, _ = built
    snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text()
    figures = sorted(p.name for p in (workdir / "results" / "figures").glob("*.png"))
    assert len(figures) == 17 and all(name in html for name in figures), figures
    captions = [rst.read_text().splitlines()[0][:40] for rst in (ROOT / "reports").glob("*.rst")]
    assert len(captions) == 18 and all(c in html for c in captions), [
        c for c in captions if c not in html
    ]


def test_adding_a_seed_trains_only_that_seed_and_reordering_keys_replans_nothing(built, tiny_dir):
    workdir, cfg = built
    original = (workdir / "config.yaml").read_text()
    reordered = {
        k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v)
        for k, v in reversed(list(cfg.items()))
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(reordered, sort_keys=False))
    try:
        assert planned(workdir) == []
        more = {**cfg, "training": {**cfg["training"], "seeds": [0, 1, 2]}}
        (workdir / "config.yaml").write_text(yaml.safe_dump(more))
        trained = [
            p for p in planned(workdir) if p.endswith(".safetensors") and "/softprompt/" in p
        ]
    finally:
        (workdir / "config.yaml").write_text(original)
    assert trained and all("-seed2." in p for p in trained), trained


def test_the_costs_table_has_a_row_per_benchmarked_job(built):
    workdir, _ = built
    costs = pd.read_csv(workdir / "results/tables/costs.csv")
    files = list((workdir / "logs").glob("*/benchmarks/**/*.tsv"))
    assert list(costs.columns[:5]) == ["rule", "wildcards", "seconds", "max_rss_mb", "threads"]
    assert len(costs) == len(files) > 0
    assert {"logprobs", "fits", "softprompt", "teacher", "sae", "discovery", "reading"} <= set(
        costs["stage"]
    )
    assert (costs["seconds"] > 0).all() and (costs["max_rss_mb"] > 0).all()
    per_rule = pd.read_csv(workdir / "results/tables/costs_rules.csv")
    assert {"fit_phase0", "logprobs_dictionary", "train_softprompt"} <= set(per_rule["rule"])
    assert (
        per_rule["threads"] == 1
    ).all()  # every CPU job takes one thread (rules/common.smk: scheduling)
    profile = yaml.safe_load((workdir / "results/tables/costs_profile.yaml").read_text())[
        "set-resources"
    ]
    assert profile["fit_phase0"]["mem_mb"] >= 1000 and profile["fit_phase0"]["runtime"] >= 5


def dry_run_jobs(output: str) -> dict[str, list[str]]:
    """rule -> the resources line of each job a dry run prints."""
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        res = re.search(r"^\s+resources: (.+)$", block, flags=re.M)
        if head:
            jobs.setdefault(head[1], []).append(res[1] if res else "")
    return jobs


MODEL_RULES = {
    "teacher",
    "teacher_targets",
    "steering_vector",
    "logprobs_dictionary",
    "logprobs_reference",
    "logprobs_noise",
    "logprobs_softprompt",
    "train_softprompt",
    "evaluate_softprompt",
    "read_softprompt",
    "geometry_softprompt",
    "verbalise_softprompt",
    "token_geometry",
    "propose_instructions",
    "screen_pool",
    "pursue_dictionary",
    "sae_activations",
    "train_sae",
    "read_sae",
}


def test_on_a_gpu_every_model_rule_asks_the_slurm_profile_for_a_gpu_on_the_gpu_partition(
    built, tmp_path
):
    workdir, _ = built
    (tmp_path / "cuda.yaml").write_text(
        "model_settings: {device: cuda}\ncluster: {gpu_partition: a100}\n"
    )
    # every job below the model rule (forcing the model checkpoint itself would hide the SAE rules,
    # which its output plans)
    roots = [
        "teacher",
        "steering_vector",
        "output_head",
        "sae_activations",
        "propose_instructions",
        "token_geometry",
    ]
    res = snakemake(
        workdir,
        "--dry-run",
        "--forcerun",
        *roots,
        "--profile",
        str(ROOT / "profiles" / "slurm"),
        "--configfile",
        str(workdir / "config.yaml"),
        str(tmp_path / "cuda.yaml"),
    )
    jobs = dry_run_jobs(res.stdout + res.stderr)
    assert MODEL_RULES <= set(jobs), MODEL_RULES - set(jobs)
    for rule, lines in jobs.items():
        for line in lines:
            on_gpu = "gpu=1" in line.split(", ")
            assert on_gpu == (rule in MODEL_RULES), (rule, line)
            assert ("slurm_partition=a100" in line) == on_gpu, (rule, line)


def test_changing_one_cache_replans_exactly_the_jobs_that_read_it(built, tiny_dir, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    workdir, _ = built
    tag = tiny_dir.name
    cache = workdir / f"results/{tag}/logprobs/spanish/atom-pirate.parquet"
    kept = shutil.copy2(cache, tmp_path / "kept.parquet")
    # new bytes, not just a new time: Snakemake compares small inputs by checksum, so a bare
    # touch is (rightly) no change
    table = pq.read_table(cache)
    meta = {**(table.schema.metadata or {}), b"changed": b"yes"}
    pq.write_table(table.replace_schema_metadata(meta), cache)
    try:
        plan = planned(workdir)
    finally:
        shutil.copy2(kept, cache)
    assert planned(workdir) == []
    jobs = {p for p in plan if p.startswith(f"results/{tag}/")}
    fits = {
        f"results/{tag}/fits/spanish/{n}.parquet"
        for n in ["target", "noise-seed0", "noise-seed1"]
        + [
            f"{k}-{v}-seed{s}"
            for k in ("soft",)
            for v in ("prepend", "contextualised")
            for s in (0, 1)
        ]
        + [f"control-{v}-seed{s}" for v in ("prepend", "contextualised") for s in (0, 1)]
    }
    discovery = {
        f"results/{tag}/discovery/spanish/{n}.parquet"
        for n in ["screen-0", "screen-1"]
        + [
            f"{k}-{v}-seed{s}"
            for k in ("soft", "control")
            for v in ("prepend", "contextualised")
            for s in (0, 1)
        ]
    }
    assert jobs == fits | discovery, sorted(jobs ^ (fits | discovery))
    assert not [
        p
        for p in plan
        if not p.startswith((f"results/{tag}/", "results/tables/", "results/figures/"))
        and p != "results/RESULTS.md"
    ]


def test_two_runs_of_one_config_give_identical_tables_and_a_stage_builds_only_its_part(
    built, tmp_path, tiny_dir
):
    workdir, cfg = built
    write_config(tmp_path, tiny_dir)
    snakemake(tmp_path, "train", "decompose")
    made = {p.name for p in (tmp_path / "results" / "figures").iterdir()}
    assert made == {
        "training.png",
        "training_curves.png",
        "phase0.png",
        "phase05.png",
        "phase1.png",
        "phase1_path.png",
        "weights.png",
    }
    assert not (tmp_path / "results" / tiny_dir.name / "reading").exists()
    assert not (tmp_path / "results" / tiny_dir.name / "sae").exists()
    for table in sorted((tmp_path / "results" / "tables").glob("*.csv")):
        again = pd.read_csv(table)
        first = pd.read_csv(workdir / "results" / "tables" / table.name)
        timing = [c for c in first.columns if c in ("seconds", "s", "wall_s")]
        pd.testing.assert_frame_equal(
            again.drop(columns=timing), first.drop(columns=timing), check_exact=True, obj=table.name
        )


def test_the_results_page_is_built_from_the_tables(built):
    workdir, _ = built
    page = (workdir / "results" / "RESULTS.md").read_text()
    training = pd.read_csv(workdir / "results" / "tables" / "training.csv")
    for row in training.itertuples():
        assert f"{row.kl_closure_test:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]" in page
    for table in (
        "training",
        "phase0",
        "phase05",
        "phase1",
        "dictionary",
        "recovery",
        "reading",
        "sae",
        "costs",
    ):
        assert f"`{table}.csv`" in page


def test_weight_and_contrastive_teachers_are_made_by_their_rules_and_decomposed(tmp_path, tiny_dir):
    """A LoRA distilled from the Spanish teacher, and contrastive prompts on the pirate steering
    texts, each through the ordinary chain to the weights table."""
    pirate = {
        "layer": 1,
        "scale": 2.0,
        "positive": ["Arr matey!", "Ye be wantin treasure!"],
        "negative": ["Hello there.", "The sky is blue."],
    }
    behaviors = [
        {"name": "spanish", "instruction": "Respond in Spanish.", "giveaways": ["spanish"]},
        {"name": "spanish_lora", "distill": {"from": "spanish", "rank": 2}},
        {"name": "pirate", "steering": pirate},
        {"name": "pirate_c", "contrastive": {"from": "pirate"}},
    ]
    cfg = write_config(
        tmp_path,
        tiny_dir,
        behaviors=behaviors,
        distill={
            "steps": 4,
            "batch_size": 4,
            "positions": 3,
            "target_modules": ["q_proj", "v_proj"],
        },
    )
    cfg["training"].update(
        behaviors=["spanish_lora", "pirate", "pirate_c"], seeds=[0], variants=["prepend"]
    )
    cfg["discovery"].update(behaviors=[], controls=[])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    tag = tiny_dir.name
    lora = tmp_path / f"results/{tag}/lora/spanish_lora"
    snakemake(
        tmp_path,
        f"results/{tag}/fits/spanish_lora/target.parquet",
        "results/figures/weights.png",
    )
    weights = pd.read_csv(tmp_path / "results/tables/weights.csv").set_index("behavior", drop=False)
    assert list(weights["teacher_kind"]) == ["steering", "contrastive", "distilled_lora"]
    c, steer = weights.loc["pirate_c"], weights.loc["pirate"]
    assert c["source"] == "pirate" and c["relative_closure"] == pytest.approx(
        c["kl_closure_test"] / steer["kl_closure_test"]
    )
    assert c["relative_ci_low"] <= c["relative_closure"] <= c["relative_ci_high"]
    assert pd.isna(steer["relative_closure"]) and pd.isna(c["teacher_closure_test"])
    teachers = {  # one steering vector from the same texts: the same completions
        b: pd.read_parquet(tmp_path / f"results/{tag}/teacher/{b}.parquet")
        for b in ("pirate", "pirate_c")
    }
    assert teachers["pirate"]["completion"].equals(teachers["pirate_c"]["completion"])
    _, meta = read_soft_prompt(
        tmp_path / f"results/{tag}/softprompt/pirate_c/prepend-seed0.safetensors"
    )
    assert (
        meta["objective"]["objective"].startswith("contrastive")
        and meta["objective"]["source"] == "pirate"
    )
    row = weights.loc["spanish_lora"]
    assert (row["behavior"], row["teacher_kind"], row["rank"]) == (
        "spanish_lora",
        "distilled_lora",
        2,
    )
    assert row["ci_low"] <= row["kl_closure_test"] <= row["ci_high"]
    assert (
        row["teacher_closure_test"] == pd.read_csv(lora / "curve.csv")["kl_closure_test"].iloc[-1]
    )
    assert row["source_atom"] == "spanish" and row["source_on_top"] == (
        row["top_atom"] == "spanish"
    )
    # the LoRA learned from the Spanish teacher's cached targets (no Spanish soft prompt needs them)
    assert (tmp_path / f"results/{tag}/targets/spanish/target.parquet").is_file()
    assert (lora / "adapter_model.safetensors").is_file() and (
        lora / "adapter_config.json"
    ).is_file()
    curve = pd.read_csv(lora / "curve.csv")
    assert len(curve) == 4 and curve["ci_low"].iloc[-1] <= curve["kl_closure_test"].iloc[-1]
    teacher = pd.read_parquet(tmp_path / f"results/{tag}/teacher/spanish_lora.parquet")
    assert (teacher["behavior"] == "spanish_lora").all()
    fit = pd.read_parquet(tmp_path / f"results/{tag}/fits/spanish_lora/target.parquet")
    assert not fit["is_target"].any()  # no instruction of its own: the dictionary must find it
    assert not [p for p in planned(tmp_path) if "/lora/" in p]  # a complete adapter is not redone

    # the same adapter given as `lora:` is a teacher of kind lora, its rank read from its config
    shutil.copytree(lora, tmp_path / "adapters/given")
    cfg["behaviors"].append({"name": "given", "lora": "adapters/given"})
    cfg["training"]["behaviors"].append("given")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "results/tables/weights.csv")
    given = pd.read_csv(tmp_path / "results/tables/weights.csv").set_index("behavior").loc["given"]
    assert (given["teacher_kind"], given["rank"]) == ("lora", 2)
    assert pd.isna(given["teacher_closure_test"]) and pd.isna(given["source_on_top"])
