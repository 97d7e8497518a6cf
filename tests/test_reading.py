"""Reading soft prompts on the tiny model: nearest tokens, perturbations, token prompts, exact
match, the coordinate search, verbalisation parsing, and their bad input."""

from __future__ import annotations

import pytest
import torch

from softlens.config import ConfigError
from softlens.geometry import Vocabulary, ordinary_token_ids, rotate_toward, shrink
from softlens.repair import (
    SearchObjective,
    SearchSettings,
    banned_token_ids,
    coordinate_search,
    random_start,
    roundtrips,
)
from softlens.scoring import (
    Targets,
    distributions,
    exact_match,
    frame_scores,
    make_targets,
    mean_kl,
)
from softlens.slot import FramedSoftPrompt, HardPrompt, PromptSlot, TokenPrompt
from softlens.teacher import GenerationSettings, generate
from softlens.training_settings import TrainSettings
from softlens.verbalise import candidate_requests, clean_candidate

MESSAGES = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do plants make food?",
    "Tell me about the lazy dog.",
    "What is a fox?",
    "How do I boil an egg?",
]
POSITIONS = 4
TEACHER = HardPrompt("Respond in Spanish.")


@pytest.fixture(scope="module")
def lm(sharp_lm):
    return sharp_lm


@pytest.fixture(scope="module")
def vocab(lm):
    return Vocabulary(lm)


@pytest.fixture(scope="module")
def targets(lm):
    slot = PromptSlot.for_model(lm)
    completions = generate(
        lm, slot, TEACHER, MESSAGES, GenerationSettings(max_new_tokens=POSITIONS)
    )
    target = make_targets(lm, slot, TEACHER, MESSAGES, completions, POSITIONS, 4)
    base = make_targets(lm, slot, None, MESSAGES, completions, POSITIONS, 4)
    return slot, target, base


# --- geometry
# ----------------------------------------------------------------------------------------


def test_a_tokens_own_embedding_is_its_nearest_token_and_exclusion_finds_another(lm, vocab):
    ids = vocab.ids[:20]
    for metric in ("cosine", "l2"):
        found, _ = vocab.nearest(vocab.all[ids], metric)
        assert torch.equal(found.cpu(), ids.cpu())
        other, _ = vocab.nearest(vocab.all[ids], metric, exclude=ids)
        assert not (other == ids).any()
    special = set(lm.tokenizer.all_special_ids)
    assert not special & set(ordinary_token_ids(lm).tolist())


def test_nearest_token_respects_the_allowed_mask(vocab):
    ids = vocab.ids[:5]
    allowed = torch.ones(len(vocab.ids), dtype=torch.bool)
    allowed[:5] = False
    found, _ = vocab.nearest(vocab.all[ids], "cosine", allowed=allowed)
    assert not set(found.tolist()) & set(ids.tolist())


def test_rotation_keeps_the_norm_turns_by_the_angle_and_stops_at_the_target():
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(5, 16, generator=g) * 3, torch.randn(5, 16, generator=g)
    assert torch.equal(rotate_toward(v, t, 0), v)  # exactly the unperturbed prompt
    r = rotate_toward(v, t, 10)
    assert torch.allclose(r.norm(dim=-1), v.norm(dim=-1), atol=1e-4)
    angle = torch.rad2deg(torch.arccos(torch.nn.functional.cosine_similarity(r, v, dim=-1)))
    assert torch.allclose(angle, torch.full_like(angle, 10.0), atol=1e-2)
    closer = torch.nn.functional.cosine_similarity(
        r, t, dim=-1
    ) > torch.nn.functional.cosine_similarity(v, t, dim=-1)
    assert closer.all()
    assert torch.allclose(rotate_toward(v, t, 180), t)  # past the target: the target itself
    assert torch.allclose(shrink(v, 4), v / 4)
    with pytest.raises(ValueError, match="factor"):
        shrink(v, 0)


# --- token prompts and exact match
# -------------------------------------------------------------------------


def test_a_token_prompt_is_the_same_input_as_its_text_and_as_its_embeddings_in_a_frame(lm, vocab):
    slot = PromptSlot.for_model(lm)
    ids = slot.tokenize("Respond in Spanish.")
    a = slot.batch(TokenPrompt(tuple(ids)), MESSAGES[:2])
    b = slot.batch(TEACHER, MESSAGES[:2])
    assert torch.equal(a.token_ids, b.token_ids) and torch.allclose(
        a.inputs_embeds, b.inputs_embeds
    )
    framed = slot.batch(TokenPrompt(tuple(ids), "Be ___."), MESSAGES[:2])
    soft = slot.batch(FramedSoftPrompt(vocab.all[ids], "Be ___."), MESSAGES[:2])
    assert torch.allclose(framed.inputs_embeds, soft.inputs_embeds, atol=1e-6)


def test_the_teacher_matches_itself_exactly_and_exact_match_counts_leading_agreement(lm, targets):
    slot, target, base = targets
    s = TrainSettings(positions=POSITIONS)
    own = frame_scores(lm, slot, TEACHER, target, base, POSITIONS, 4, s)
    assert own["kl_closure_test"] == pytest.approx(1.0, abs=1e-6)
    assert (
        own["exact_match_at_1"] == own["exact_match_at_4"] == 1.0
    )  # greedy teacher == its argmaxes
    logp = target.logp.clone()
    logp[0, 2] = logp[0, 2].flip(-1)  # message 0 now disagrees at its third token
    assert exact_match(target, logp, 1) == 1.0
    assert exact_match(target, logp, 4) == pytest.approx((len(MESSAGES) - 1) / len(MESSAGES))


# --- the coordinate search
# ----------------------------------------------------------------------------------


def test_batched_candidate_losses_equal_scoring_each_candidate_alone(lm, vocab, targets):
    slot, target, _ = targets
    s = SearchSettings(positions=POSITIONS, batch_size=5)  # chunks that split candidates' contexts
    for frames in [("___",), ("Be ___.", "___.")]:
        objective = SearchObjective(lm, slot, target, frames, vocab.all, s)
        cands = vocab.ids[
            torch.randperm(len(vocab.ids), generator=torch.Generator().manual_seed(1))[:9]
        ].view(3, 3)
        batched = objective.losses(cands)
        for c, loss in zip(cands, batched):
            kls, counts = [], []
            for f, frame in enumerate(frames):
                idx = list(range(f, len(MESSAGES), len(frames)))
                sub = Targets(
                    [MESSAGES[i] for i in idx],
                    [target.fed[i] for i in idx],
                    target.tokens[idx],
                    target.mask[idx],
                    target.logp[idx],
                    None,
                )
                logp, _ = distributions(
                    lm,
                    slot,
                    TokenPrompt(tuple(c.tolist()), frame),
                    sub.messages,
                    sub.fed,
                    POSITIONS,
                    4,
                )
                kls.append(mean_kl(sub, logp) * float(sub.mask.sum()))
                counts.append(float(sub.mask.sum()))
            assert float(loss) == pytest.approx(sum(kls) / sum(counts), rel=1e-4)
        loss0, grad = objective.gradient(cands[0])
        assert loss0 == pytest.approx(float(batched[0]), rel=1e-4) and grad.shape == (
            3,
            vocab.all.shape[1],
        )


def test_search_never_gets_worse_lowers_the_loss_and_avoids_banned_tokens(lm, vocab, targets):
    slot, target, _ = targets
    s = SearchSettings(
        steps=6, top_k=16, candidates=8, positions=POSITIONS, require_roundtrip=False
    )
    objective = SearchObjective(lm, slot, target, ("___",), vocab.all, s)
    banned = banned_token_ids(lm.tokenizer, ["Respond in Spanish."])
    allowed = torch.tensor([i for i in vocab.ids.tolist() if i not in banned])
    init = allowed[:4].tolist()
    ids, history = coordinate_search(objective, init, allowed, s, seed=0, tokenizer=lm.tokenizer)
    assert (history["loss"].diff().dropna() <= 1e-9).all()
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert not set(ids) & banned and history["ids"].iloc[-1] == ids
    again, _ = coordinate_search(objective, init, allowed, s, seed=0, tokenizer=lm.tokenizer)
    assert again == ids  # seeded: the same search twice


def test_a_start_that_does_not_round_trip_is_still_searched_and_random_starts_round_trip(
    lm, vocab, targets
):
    slot, target, _ = targets
    tok = lm.tokenizer
    merged = next(t for t in vocab.ids.tolist() if len(tok.convert_ids_to_tokens(t)) >= 3)
    start = tok.convert_tokens_to_ids(
        list(tok.convert_ids_to_tokens(merged))
    )  # its characters, one by one
    assert not roundtrips(tok, start)
    s = SearchSettings(steps=2, top_k=16, candidates=6, positions=POSITIONS, require_roundtrip=True)
    objective = SearchObjective(lm, slot, target, ("___",), vocab.all, s)
    _, history = coordinate_search(objective, start, vocab.ids, s, seed=0, tokenizer=tok)
    assert (history["tried"].iloc[1:] > 0).all()
    ids = random_start(vocab.ids, 6, torch.Generator().manual_seed(0), tok)
    assert len(ids) == 6 and roundtrips(tok, ids)


def test_banned_tokens_cover_the_instruction_and_its_case_variants(lm):
    tok = lm.tokenizer
    banned = banned_token_ids(tok, ["Respond in Spanish."])
    assert set(tok("Respond in Spanish.", add_special_tokens=False)["input_ids"]) <= banned
    for variant in ["respond", " respond", "RESPOND", "in", " In", "spanish", " SPANISH"]:
        ids = tok(variant, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and tok.decode(ids).strip().lower() in {"respond", "in", "spanish"}:
            assert ids[0] in banned, variant
    assert roundtrips(tok, tok("Be concise.", add_special_tokens=False)["input_ids"])


# --- verbalisation
# -------------------------------------------------------------------------------------------


def test_verbalisation_answers_are_cleaned_to_one_instruction():
    assert clean_candidate('\n  1. "Respond in Spanish."\nMore text') == "Respond in Spanish."
    assert clean_candidate("Instruction: Be concise.") == "Be concise."
    assert clean_candidate("- “Speak like a pirate”") == "Speak like a pirate"
    assert clean_candidate("  \n \n") == ""
    assert candidate_requests(["a", "b"], 2) == [(0, "a"), (0, "a"), (1, "b"), (1, "b")]


# --- bad input
# -------------------------------------------------------------------------------------------------


def test_bad_reading_input_fails_with_a_clear_error(lm, vocab, targets, tmp_path):
    from softlens.io import read_soft_prompt, write_soft_prompt

    slot, target, _ = targets
    s = SearchSettings(steps=1, positions=POSITIONS)
    objective = SearchObjective(lm, slot, target, ("___",), vocab.all, s)
    with pytest.raises(ConfigError, match="bans every candidate"):
        coordinate_search(
            objective,
            vocab.ids[:2].tolist(),
            torch.tensor([], dtype=torch.long),
            s,
            0,
            lm.tokenizer,
        )
    with pytest.raises(ConfigError, match="top_k = 0"):
        SearchSettings(top_k=0)
    with pytest.raises(ConfigError, match="samples = 0"):
        candidate_requests(["What is it?"], 0)
    other = tmp_path / "wide.safetensors"
    write_soft_prompt(other, torch.zeros(4, 2 * vocab.all.shape[1]), {"model": "another"})
    with pytest.raises(ValueError, match="another model"):
        read_soft_prompt(other, vocab.all.shape[1])


def test_a_soft_prompt_trained_for_another_model_is_refused_by_the_reader(sharp_dir, tmp_path):
    from softlens.io import write_soft_prompt
    from softlens.job import ModelJob, SoftPrompt

    prompt = tmp_path / "p.safetensors"
    write_soft_prompt(prompt, torch.zeros(2, 64), {"model": "resources/models/Qwen3-4B.json"})
    job = ModelJob(model=sharp_dir, settings={"device": "cpu", "dtype": "float32"})
    with pytest.raises(ValueError, match="trained for model 'resources/models/Qwen3-4B.json'"):
        job.soft_prompt(SoftPrompt(behavior="x", variant="prepend", seed=0, path=str(prompt)))


def test_reading_config_names_the_offending_key(default_config, schema):
    from softlens.config import validate_config

    cfg = {**default_config, "reading": {"behaviors": ["klingon"]}}
    with pytest.raises(ConfigError, match="reading.behaviors: 'klingon'"):
        validate_config(cfg, schema)
    cfg = {**default_config, "reading": {"search": {"top_k": 0}}}
    with pytest.raises(ConfigError, match="top_k"):
        validate_config(cfg, schema)
    cfg = {**default_config, "reading": {"verbalisation": {"samples": 0}}}
    with pytest.raises(ConfigError, match="samples"):
        validate_config(cfg, schema)


def test_the_repair_step_is_chosen_on_selection_messages_and_each_prompt_scored_once():
    import pandas as pd

    from softlens.reading import choose_step

    history = pd.DataFrame(
        {
            "step": [0, 1, 2, 3],
            "loss": [3.0, 2.0, 1.5, 1.5],
            "ids": [[1, 2], [1, 5], [7, 5], [7, 5]],
        }
    )
    calls = []

    def closure(ids):  # the search's loss fell at every step; the selection messages prefer step 1
        calls.append(tuple(ids))
        return {"kl_closure_test": {(1, 2): 0.2, (1, 5): 0.6, (7, 5): 0.4}[tuple(ids)]}

    ids, scored = choose_step(history, closure)
    assert ids == [1, 5] and scored["selected"].tolist() == [False, True, False, False]
    assert sorted(calls) == [(1, 2), (1, 5), (7, 5)]
    assert scored["kl_closure_select"].tolist() == [0.2, 0.6, 0.4, 0.4]
