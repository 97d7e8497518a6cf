"""Soft-prompt training on the tiny model: it learns, it resumes exactly, it refuses bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from conftest import ROOT
from softlens.checkpoints import load_checkpoint
from softlens.config import ConfigError
from softlens.logprobs import fed_completions, forward_scored, prefix_cache
from softlens.scoring import make_targets, mean_kl
from softlens.slot import HardPrompt, PromptSlot, SoftPrompt
from softlens.teacher import GenerationSettings, generate
from softlens.training import Distillation, losses, train
from softlens.training_settings import BARE, TrainSettings, settings_for

MESSAGES = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do plants make food?",
    "Tell me about the lazy dog.",
    "What is a fox?",
    "Hola, why is the sky blue?",
    "How do I boil an egg?",
    "What is gravity?",
    "The quick brown fox.",
    "Explain it please.",
]
POSITIONS = 5


TEACHER = HardPrompt("Respond in Spanish.")


@pytest.fixture(scope="module")
def tiny_lm(sharp_lm):
    return sharp_lm


@pytest.fixture(scope="module")
def setup(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    teacher = TEACHER
    completions = generate(
        tiny_lm, slot, teacher, MESSAGES, GenerationSettings(max_new_tokens=POSITIONS)
    )
    tr = make_targets(tiny_lm, slot, teacher, MESSAGES[:7], completions[:7], POSITIONS, 4, layer=1)
    te = make_targets(tiny_lm, slot, teacher, MESSAGES[7:], completions[7:], POSITIONS, 4)
    base = make_targets(tiny_lm, slot, None, MESSAGES[7:], completions[7:], POSITIONS, 4)
    return slot, tr, te, base


def distilled(lm, slot, targets, test, s, seed, *rest):
    """`train` against the teacher's targets (the distillation objective)."""
    return train(lm, slot, Distillation(lm, targets, s), test, s, seed, *rest)


def settings(**kw) -> TrainSettings:
    return TrainSettings(
        **{
            "length": 6,
            "steps": 30,
            "batch_size": 4,
            "lr": 0.1,
            "positions": POSITIONS,
            "eval_every": 10,
            "warmup": 2,
            **kw,
        }
    )


def test_training_closes_most_of_the_held_out_kl(tiny_lm, setup):
    slot, tr, te, base = setup
    vectors, curve = distilled(tiny_lm, slot, tr, te, settings(), seed=0)
    kl_base = mean_kl(te, base.logp)
    closure = 1 - curve["kl_test"].dropna() / kl_base
    assert kl_base > 0.05  # the teacher really differs from the unprompted model
    assert (
        closure.iloc[-1] > 0.3
    )  # a random model generalises poorly to held-out messages; 0 at init
    assert curve["kl"].iloc[-5:].mean() < 0.6 * curve["kl"].iloc[:3].mean()
    assert curve["loss"].iloc[-5:].mean() < curve["loss"].iloc[:5].mean()
    assert vectors.shape == (6, tiny_lm.embeddings.weight.shape[1])


def test_contextualised_training_samples_its_frames_and_learns_inside_them(tiny_lm, setup):
    slot, tr, te, base = setup
    frames = ("Be ___.", "Please ___.")
    vectors, curve = distilled(tiny_lm, slot, tr, te, settings(frames=frames), seed=0)
    assert set(curve["frame"]) == set(frames)
    assert curve["kl_test"].dropna().iloc[-1] < 0.95 * mean_kl(te, base.logp)
    assert curve["kl"].iloc[-5:].mean() < 0.6 * curve["kl"].iloc[:3].mean()


def test_same_seed_same_numbers_and_other_seed_differs(tiny_lm, setup):
    slot, tr, te, _ = setup
    a, _ = distilled(tiny_lm, slot, tr, None, settings(steps=5), seed=3)
    b, _ = distilled(tiny_lm, slot, tr, None, settings(steps=5), seed=3)
    c, _ = distilled(tiny_lm, slot, tr, None, settings(steps=5), seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_prefix_cache_and_scored_logits_equal_a_full_forward_with_gradients(tiny_lm, setup):
    slot, tr, _, _ = setup
    v = torch.randn(
        6, tiny_lm.embeddings.weight.shape[1], device=tiny_lm.device, requires_grad=True
    )
    batch = slot.batch(SoftPrompt(v), tr.messages[:4], tr.fed[:4], padding_side="inner")
    fast, _ = forward_scored(
        tiny_lm, batch, POSITIONS, prefix_cache(tiny_lm, batch), batch.slot_start
    )
    (g_fast,) = torch.autograd.grad(
        fast.exp().mul(torch.arange(fast.shape[-1], device=fast.device)).sum(), v
    )
    batch = slot.batch(SoftPrompt(v), tr.messages[:4], tr.fed[:4], padding_side="inner")
    full = torch.log_softmax(tiny_lm.model(**batch.model_inputs()).logits.float(), -1)[
        :, -POSITIONS:
    ]
    (g_full,) = torch.autograd.grad(
        full.exp().mul(torch.arange(full.shape[-1], device=full.device)).sum(), v
    )
    assert batch.slot_start > 0
    assert torch.allclose(fast, full, atol=1e-5) and torch.allclose(g_fast, g_full, atol=1e-4)


def test_prefix_caches_pass_the_installed_transformers_cache_keyword(tiny_lm, setup):
    """transformers renamed `past_key_values` to `cache`: the old name warns now, and a release
    that ignored it would score every context without its prefix."""
    slot, tr, _, _ = setup
    batch = slot.batch(HardPrompt("Be brief."), tr.messages[:2], tr.fed[:2], padding_side="inner")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        forward_scored(tiny_lm, batch, POSITIONS, prefix_cache(tiny_lm, batch), batch.slot_start)


def test_ce_and_state_objectives_train(tiny_lm, setup):
    slot, tr, te, _ = setup
    s = settings(kl_weight=0.0, ce_weight=1.0, state_weight=1.0, state_layer=1, steps=15)
    _, curve = distilled(tiny_lm, slot, tr, te, s, seed=0)
    assert {"ce", "state"} <= set(curve.columns) and curve[
        ["ce", "state", "loss"]
    ].notna().all().all()
    assert curve["state"].iloc[-3:].mean() < curve["state"].iloc[:3].mean()
    with pytest.raises(ValueError, match="teacher's states"):
        distilled(tiny_lm, slot, te, None, s, seed=0)  # targets built without states


def test_early_tokens_weigh_more_in_the_ce(setup):
    _, tr, _, _ = setup
    q = torch.log_softmax(torch.randn(*tr.logp.shape), -1)
    q_early_bad = q.clone()
    q_early_bad[:, 0] = torch.log_softmax(torch.randn(q.shape[0], q.shape[-1]) * 5, -1)
    s1, s3 = (
        settings(ce_weight=1, early_tokens=1, early_weight=1.0),
        settings(ce_weight=1, early_tokens=1, early_weight=3.0),
    )
    args = (None, tr.logp, None, tr.tokens, tr.mask)
    gap1 = losses(s1, q_early_bad, *args)["ce"] - losses(s1, q, *args)["ce"]
    gap3 = losses(s3, q_early_bad, *args)["ce"] - losses(s3, q, *args)["ce"]
    assert abs(gap3) > abs(gap1)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="length = 0"):
        TrainSettings(length=0)
    with pytest.raises(ConfigError, match="placeholder"):
        TrainSettings(frames=("Be nice.",))
    with pytest.raises(ConfigError, match="nothing to train"):
        TrainSettings(kl_weight=0.0)
    with pytest.raises(ConfigError, match="variant"):
        settings_for({}, "appended")
    assert settings_for({"frames": ["Be ___."], "length": 4}, "prepend").frames == (BARE,)
    assert settings_for({"frames": ["Be ___."], "length": 4}, "contextualised").frames == (
        "Be ___.",
    )


KILLED = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    import softlens.training as T
    from softlens.scoring import make_targets
    from test_training import MESSAGES, POSITIONS, settings
    from softlens.models import load_model
    from softlens.slot import HardPrompt, PromptSlot, SoftPrompt
    from softlens.teacher import GenerationSettings, generate

    lm = load_model({model!r}, {{"device": os.environ.get("SOFTLENS_TEST_DEVICE", "cpu"), "dtype":
    "float32"}})
    slot = PromptSlot.for_model(lm)
    teacher = HardPrompt("Respond in Spanish.")
    comps = generate(lm, slot, teacher, MESSAGES, GenerationSettings(max_new_tokens=POSITIONS))
    tr = make_targets(lm, slot, teacher, MESSAGES, comps, POSITIONS, 4)
    save = T.save_checkpoint

    def save_then_die(path, state):  # killed right after the checkpoint at step 6, mid-run
        save(path, state)
        if state["step"] == 6:
            os.kill(os.getpid(), signal.SIGKILL)

    T.save_checkpoint = save_then_die
    s = settings(steps=10, checkpoint_every=3)
    vectors, curve = T.train(lm, slot, T.Distillation(lm, tr, s), None, s, 0,
    {ckpt!r}, {{"run": 1}})
    torch.save(vectors, {ckpt!r} + ".final")
""")


def test_a_killed_training_run_resumes_where_it_stopped_and_ends_the_same(
    tiny_lm, sharp_dir, tmp_path
):
    ckpt = str(tmp_path / "prompt.ckpt")
    script = KILLED.format(tests=str(ROOT / "tests"), model=str(sharp_dir), ckpt=ckpt)
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")),
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert torch.load(ckpt, weights_only=True)["step"] == 6

    slot = PromptSlot.for_model(tiny_lm)
    comps = generate(tiny_lm, slot, TEACHER, MESSAGES, GenerationSettings(max_new_tokens=POSITIONS))
    tr = make_targets(tiny_lm, slot, TEACHER, MESSAGES, comps, POSITIONS, 4)
    resumed, curve = distilled(
        tiny_lm, slot, tr, None, settings(steps=10, checkpoint_every=3), 0, ckpt, {"run": 1}
    )
    assert list(curve["step"]) == list(range(1, 11))  # steps 1-6 came from the checkpoint
    straight, _ = distilled(tiny_lm, slot, tr, None, settings(steps=10, checkpoint_every=3), 0)
    assert torch.allclose(resumed, straight, atol=1e-6)

    with pytest.raises(ConfigError, match="different config.*lr"):
        load_checkpoint(
            ckpt, {**settings(steps=10, checkpoint_every=3, lr=0.5).describe(), "seed": 0, "run": 1}
        )
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(tmp_path / "bad.ckpt", {})


def test_fed_completions_pad_to_a_common_length():
    assert fed_completions([[5, 6, 7, 8], [9]], 3, 0) == [[5, 6], [9, 0]]


def test_a_split_without_completions_is_refused():
    import pandas as pd

    from softlens.scoring import contexts

    teacher = pd.DataFrame(
        {"split": ["train", "test"], "user_message": ["a", "b"], "completion_ids": [[1, 2], []]}
    )
    assert contexts(teacher, "train") == (["a"], [[1, 2]])
    with pytest.raises(ValueError, match="no test messages with a completion"):
        contexts(teacher, "test")
