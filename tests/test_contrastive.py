"""Contrastive soft prompts on the tiny model: the reference log-likelihoods are the unprompted
model's, training separates the positive texts from the negative ones on messages it never saw,
and the config derives the behaviour's teacher from its steering source."""

from __future__ import annotations

import copy

import pytest
import torch

from softlens.config import ConfigError, behavior_source, validate_config, with_derived_teachers
from softlens.contrastive import Contrastive
from softlens.job import ModelJob
from softlens.logprobs import Student
from softlens.scoring import make_targets
from softlens.slot import SoftPrompt
from softlens.tables import teacher_kind
from softlens.training import train
from softlens.training_settings import TrainSettings
from test_training import MESSAGES  # 10: the first 5 train, the rest test
from tiny import write_teacher

STEERING = {
    "layer": 1,
    "scale": 2.0,
    "positive": ["Arr matey, ye be wantin treasure!", "Talk like a pirate, matey!"],
    "negative": ["The quick brown fox.", "The sky is blue."],
}
SETTINGS = dict(length=4, steps=25, batch_size=8, lr=0.1, warmup=2, positions=12, eval_every=25)


@pytest.fixture(scope="module")
def job(sharp_dir, sharp_lm, tmp_path_factory):
    teacher = tmp_path_factory.mktemp("contrastive") / "teacher.parquet"
    write_teacher(sharp_lm, MESSAGES, 5, teacher)  # its messages and split; completions unused
    return ModelJob(
        model=sharp_dir,
        settings={"device": "cpu", "dtype": "float32"},
        behavior={"name": "pirate_c", "contrastive": {"from": "pirate"}, "steering": STEERING},
        teacher=teacher,
        lm=sharp_lm,
    )


def test_the_reference_is_the_unprompted_likelihood_of_each_text(job):
    objective = Contrastive(job, TrainSettings(**SETTINGS), beta=0.1, source="pirate")
    texts = [*STEERING["positive"], *STEERING["negative"]]
    ids = [job.lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert objective.reference.shape == (5, 4) and len(objective) == 5 * 2 * 2
    for m, message in enumerate(objective.messages):  # through the path KL scoring takes
        t = make_targets(job.lm, job.slot, None, [message] * 4, ids, objective.positions, 4)
        direct = (t.logp.gather(-1, t.tokens[..., None]).squeeze(-1) * t.mask).sum(-1)
        assert torch.allclose(objective.reference[m], direct, atol=1e-4)
    assert set(objective.messages) == set(MESSAGES[:5])  # the train messages only


def test_training_separates_positive_from_negative_texts_on_held_out_messages(job):
    s = TrainSettings(**SETTINGS)
    objective = Contrastive(job, s, beta=0.1, source="pirate")
    vectors, curve = train(job.lm, job.slot, objective, None, s, seed=0)
    assert {"loss", "margin", "accuracy"} <= set(curve.columns)
    assert curve["loss"].iloc[-5:].mean() < curve["loss"].iloc[:3].mean()

    held_out = copy.copy(objective)  # the same texts, read as replies to the test messages
    held_out.messages = MESSAGES[5:]
    held_out.reference = held_out._reference(job)
    margin = held_out.mean_margin(
        Student(job.lm, job.slot), SoftPrompt(vectors.to(job.lm.dtype)), job.batch_size
    )
    assert margin > 1.0  # nats: the prompt raised the pirate texts over the plain ones


def test_the_same_seed_trains_the_same_prompt(job):
    s = TrainSettings(**{**SETTINGS, "steps": 4})
    objective = Contrastive(job, s, beta=0.1, source="pirate")
    a, _ = train(job.lm, job.slot, objective, None, s, seed=1)
    b, _ = train(job.lm, job.slot, objective, None, s, seed=1)
    assert torch.equal(a, b)


def test_a_contrastive_behaviour_takes_its_sources_steering_teacher(default_config):
    default_config["behaviors"].append(
        {"name": "pirate_c", "contrastive": {"from": "pirate_steer"}}
    )
    config = validate_config(default_config)
    spec = config["behaviors"][-1]
    assert spec["contrastive"] == {"from": "pirate_steer", "beta": 0.1}  # the schema's default
    with_derived_teachers(config, "m")
    source = next(b for b in config["behaviors"] if b["name"] == "pirate_steer")
    assert spec["steering"] == source["steering"]
    assert behavior_source(spec) == {"kind": "steered"}
    assert teacher_kind(spec) == "contrastive" and teacher_kind(source) == "steering"


def test_a_contrastive_behaviour_needs_a_steering_source(default_config):
    default_config["behaviors"].append({"name": "c", "contrastive": {"from": "spanish"}})
    with pytest.raises(
        ConfigError, match=r"\('c'\).contrastive.from = 'spanish' is not a steering behaviour"
    ):
        validate_config(default_config)
    default_config["behaviors"][-1] = {
        "name": "c",
        "contrastive": {"from": "pirate_steer", "beta": 0},
    }
    with pytest.raises(ConfigError, match="beta"):
        validate_config(default_config)
