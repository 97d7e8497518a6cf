"""Real `snakemake` calls on the tiny model, shared by the workflow and SLURM tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from conftest import ROOT

MESSAGES = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "What is gravity?",
    "How do bees make honey?",
    "Tell me about elephants.",
    "What is a volcano?",
    "How do magnets work?",
]


def write_config(workdir, model_dir, **changes) -> dict:
    (workdir / "messages.tsv").write_text(
        "message_id\tuser_message\n" + "".join(f"q{i}\t{m}\n" for i, m in enumerate(MESSAGES))
    )
    (workdir / "dictionary.tsv").write_text((ROOT / "config" / "dictionary.tsv").read_text())
    (workdir / "sae_corpus.tsv").write_text("instruction\nBe brief.\nReply in French.\n")
    cfg = {
        "model": str(model_dir),
        "model_settings": {"device": "cpu", "batch_size": 4},
        "messages": {"file": str(workdir / "messages.tsv"), "test_fraction": 0.25},
        "dictionary": {"file": str(workdir / "dictionary.tsv")},
        "teacher": {"max_new_tokens": 6},
        "logprobs": {"positions": 3},
        "noise": {"behaviors": ["spanish"], "sigmas": [0, 0.5, 2.0], "seeds": [0, 1]},
        "training": {
            "behaviors": ["spanish", "pirate"],
            "variants": ["prepend", "contextualised"],
            "seeds": [0, 1],
            "steps": 4,
            "length": 2,
            "positions": 3,
            "batch_size": 4,
            "eval_every": 2,
            "checkpoint_every": 2,
            "frames": ["Be ___.", "___."],
            "samples": 2,
        },
        "reading": {
            "seeds": [0],
            "search": {"steps": 2, "top_k": 8, "candidates": 4, "messages": 2, "positions": 3},
            "robustness": {"magnitudes": [1, 4], "angles": [0, 90], "natural_tokens": 64},
            "verbalisation": {
                "templates": ["What does that mean?"],
                "samples": 2,
                "max_new_tokens": 6,
            },
        },
        "discovery": {
            "behaviors": ["spanish"],
            "controls": ["spanish"],
            "pool": {"size": 30},
            "proposer": {
                "categories": ["tone", "language"],
                "per_category": 2,
                "max_new_tokens": 6,
            },
            "screen": {"shards": 2, "messages": 2, "top": 3},
            "pursuit": {"max_atoms": 3},
        },
        "sae": {
            "corpus": {
                "tokens": 400,
                "shards": 2,
                "batch_size": 8,
                "max_new_tokens": 8,
                "instructions": str(workdir / "sae_corpus.tsv"),
            },
            "train": {"epochs": 1, "batch_size": 64, "dead_after": 200, "checkpoint_every": 2},
            "random_draws": 2,
            "contexts": 2,
        },
        "behaviors": [
            {"name": "spanish", "instruction": "Respond in Spanish.", "giveaways": ["spanish"]},
            {"name": "concise", "instruction": "Be concise."},
            {
                "name": "pirate",
                "steering": {
                    "layer": 1,
                    "scale": 2.0,
                    "positive": ["Arr matey!"],
                    "negative": ["Hello there."],
                },
            },
        ],
    }
    cfg.update(changes)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def snakemake(workdir, *args, check=True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--cores",
        "2",
        "--benchmark-extended",
        *args,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if check and res.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
        )
    return res


def planned(workdir) -> list[str]:
    """Output files a dry run would build."""
    res = snakemake(workdir, "--dry-run")
    lines = re.findall(r"^\s+output: (.+)$", res.stdout + res.stderr, flags=re.M)
    return sorted({path for line in lines for path in line.split(", ")})
