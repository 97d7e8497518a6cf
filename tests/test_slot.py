import pytest
import torch

from softlens.config import ConfigError
from softlens.slot import (
    POSITIONS,
    FramedSoftPrompt,
    HardPrompt,
    NoisyHardPrompt,
    PromptSlot,
    SoftPrompt,
)

MESSAGES = ["What is the capital of France?", "Why is the sky blue?", "Hi"]
COMPLETIONS = [[40, 41, 42, 43], [50], [60, 61]]


def logits(lm, batch):
    return lm.model(**batch.model_inputs()).logits


def scored_logprobs(lm, batch):
    idx, mask = batch.scored_positions()
    lp = torch.log_softmax(logits(lm, batch), -1)
    return torch.gather(lp, 1, idx[..., None].expand(-1, -1, lp.shape[-1])), mask


@pytest.mark.parametrize("position", POSITIONS)
def test_hard_prompt_through_soft_path_matches_token_path(tiny_lm, position):
    slot = PromptSlot(tiny_lm.tokenizer, tiny_lm.embeddings, position)
    hard = slot.batch(HardPrompt("Respond in Spanish."), MESSAGES, COMPLETIONS)
    ids = torch.tensor(slot.tokenize("Respond in Spanish."), device=tiny_lm.device)
    soft = slot.batch(SoftPrompt(tiny_lm.embeddings(ids)), MESSAGES, COMPLETIONS)
    assert torch.equal(hard.slot_mask, soft.slot_mask) and soft.soft_mask.sum() == len(ids) * len(
        MESSAGES
    )
    with torch.no_grad():
        by_tokens = tiny_lm.model(
            input_ids=hard.token_ids, attention_mask=hard.attention_mask
        ).logits
        by_embeds = logits(tiny_lm, soft)
    mask = hard.attention_mask.bool()
    assert (by_tokens - by_embeds)[mask].abs().max() < 1e-5


def test_slot_positions_place_the_prompt_where_configured(tiny_lm):
    tok = tiny_lm.tokenizer
    for position in POSITIONS:
        slot = PromptSlot(tok, tiny_lm.embeddings, position)
        b = slot.batch(HardPrompt("Be concise."), ["Hi"])
        text = tok.decode(b.token_ids[0])
        slot_text = tok.decode(b.token_ids[0][b.slot_mask[0]])
        assert slot_text == "Be concise."
        if position == "before_template":
            assert b.slot_mask[0, 0] and text.startswith("Be concise.<|im_start|>system")
        elif position == "user_start":
            assert "<|im_start|>user\nBe concise. Hi<|im_end|>" in text
        else:
            assert text.startswith("<|im_start|>system\nBe concise.<|im_end|>")
            assert "You are a helpful assistant." not in text


def test_unprompted_sequence_has_no_slot_and_keeps_the_template(tiny_lm):
    slot = PromptSlot(tiny_lm.tokenizer, tiny_lm.embeddings, "user_start")
    b = slot.batch(None, ["Hi"])
    assert not b.slot_mask.any()
    assert tiny_lm.tokenizer.decode(b.token_ids[0]).endswith(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_padding_side_does_not_change_completion_distributions(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    with torch.no_grad():
        right, mask = scored_logprobs(
            tiny_lm, slot.batch(HardPrompt("Be concise."), MESSAGES, COMPLETIONS, "right")
        )
        left, _ = scored_logprobs(
            tiny_lm, slot.batch(HardPrompt("Be concise."), MESSAGES, COMPLETIONS, "left")
        )
    assert (right - left)[mask].abs().max() < 1e-4


def test_scored_positions_predict_the_completion_tokens(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    b = slot.batch(None, MESSAGES, COMPLETIONS)
    idx, mask = b.scored_positions()
    assert mask.sum(1).tolist() == [len(c) for c in COMPLETIONS]
    for row, completion in enumerate(COMPLETIONS):
        assert b.token_ids[row, idx[row, : len(completion)] + 1].tolist() == completion


def test_noisy_prompt_is_seeded_and_scaled_in_units_of_the_mean_token_norm(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    clean = slot.batch(HardPrompt("Respond in Spanish."), ["Hi"]).inputs_embeds
    zero = slot.batch(NoisyHardPrompt("Respond in Spanish.", 0.0, 1), ["Hi"]).inputs_embeds
    a = slot.batch(NoisyHardPrompt("Respond in Spanish.", 1.0, 1), ["Hi"])
    again = slot.batch(NoisyHardPrompt("Respond in Spanish.", 1.0, 1), ["Hi"]).inputs_embeds
    other = slot.batch(NoisyHardPrompt("Respond in Spanish.", 1.0, 2), ["Hi"]).inputs_embeds
    assert torch.equal(zero, clean) and torch.equal(a.inputs_embeds, again)
    assert not torch.equal(a.inputs_embeds, other)
    noise = (a.inputs_embeds - clean)[a.slot_mask]
    assert torch.equal(
        (a.inputs_embeds - clean)[~a.slot_mask], torch.zeros_like(clean[~a.slot_mask])
    )
    ratio = float(noise.norm(dim=-1).mean()) / slot.mean_token_norm
    assert 0.7 < ratio < 1.3


def test_framed_soft_prompt_and_gradients_reach_the_soft_vectors(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    vectors = torch.randn(3, tiny_lm.embeddings.weight.shape[1], requires_grad=True)
    b = slot.batch(FramedSoftPrompt(vectors, "Be ___."), MESSAGES, COMPLETIONS)
    assert int(b.soft_mask[0].sum()) == 3
    assert tiny_lm.tokenizer.decode(b.token_ids[0][b.slot_mask[0] & ~b.soft_mask[0]]) == "Be."
    logits(tiny_lm, b).sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0


def test_bad_slot_contents_are_named(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    with pytest.raises(ConfigError, match="placeholder"):
        FramedSoftPrompt(torch.zeros(2, 64), "Be concise.")
    with pytest.raises(ValueError, match=r"\(L, 64\)"):
        slot.batch(SoftPrompt(torch.zeros(2, 32)), ["Hi"])
    with pytest.raises(ConfigError, match="slot.position"):
        PromptSlot(tiny_lm.tokenizer, tiny_lm.embeddings, "assistant")
