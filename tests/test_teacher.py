import pytest
import torch

from softlens.config import ConfigError
from softlens.io import read_teacher, read_vector, write_table
from softlens.job import ModelJob
from softlens.slot import HardPrompt, PromptSlot
from softlens.steering import (
    compute_steering_vector,
    decoder_layers,
    mean_activation,
    steered,
    steering_direction,
)
from softlens.teacher import GenerationSettings, eos_ids, generate

MESSAGES = [
    "What is the capital of France?",
    "Hi",
    "Why is the sky blue? Tell me.",
    "How do plants make food?",
]


def test_batched_generation_equals_one_at_a_time(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    s = GenerationSettings(max_new_tokens=12, batch_size=4)
    batched = generate(tiny_lm, slot, HardPrompt("Be concise."), MESSAGES, s)
    single = [
        generate(
            tiny_lm,
            slot,
            HardPrompt("Be concise."),
            [m],
            GenerationSettings(max_new_tokens=12, batch_size=1),
        )[0]
        for m in MESSAGES
    ]
    assert batched == single
    assert all(0 < len(c) <= 12 for c in batched)


def test_completions_stop_after_eos(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    eos = next(iter(eos_ids(tiny_lm)))
    # Make EOS the model's favourite token so generation stops at once.
    with torch.no_grad():
        bias = torch.zeros(tiny_lm.model.config.vocab_size, device=tiny_lm.device)
        bias[eos] = 1e4
        handle = tiny_lm.model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
        try:
            out = generate(tiny_lm, slot, None, MESSAGES[:2], GenerationSettings(max_new_tokens=8))
        finally:
            handle.remove()
    assert out == [[eos], [eos]]


def test_sampling_is_seeded(tiny_lm):
    slot = PromptSlot.for_model(tiny_lm)
    s = GenerationSettings(max_new_tokens=10, do_sample=True, seed=7)
    a = generate(tiny_lm, slot, None, MESSAGES, s)
    assert a == generate(tiny_lm, slot, None, MESSAGES, s)
    assert a != generate(
        tiny_lm, slot, None, MESSAGES, GenerationSettings(max_new_tokens=10, do_sample=True, seed=8)
    )


def test_steering_direction_is_the_mean_difference_and_the_hook_adds_it(tiny_lm):
    pos, neg = ["Arr matey, treasure!", "Ahoy ye"], ["Hello there.", "The sky is blue."]
    d = steering_direction(tiny_lm, pos, neg, layer=1)
    assert torch.allclose(d, mean_activation(tiny_lm, pos, 1) - mean_activation(tiny_lm, neg, 1))
    assert torch.equal(steering_direction(tiny_lm, pos, pos, 1), torch.zeros_like(d))

    blocks = decoder_layers(tiny_lm.model)
    out1, in2 = [], []
    # Registered before `steered`, so this hook sees block 1's own output.
    h1 = blocks[1].register_forward_hook(
        lambda m, i, o: out1.append((o[0] if isinstance(o, tuple) else o).clone())
    )
    h2 = blocks[2].register_forward_pre_hook(
        lambda m, args, kw: in2.append((args[0] if args else kw["hidden_states"]).clone()),
        with_kwargs=True,
    )
    ids = torch.tensor([[1, 30, 40, 50]], device=tiny_lm.device)
    with torch.no_grad():
        try:
            with steered(tiny_lm.model, d, layer=1, scale=2.0):
                tiny_lm.model(input_ids=ids)
            tiny_lm.model(input_ids=ids)
        finally:
            h1.remove(), h2.remove()
    assert torch.allclose(
        in2[0], out1[0] + 2.0 * d.to(out1[0].device), atol=1e-5
    )  # steered: residual + 2d at every position
    assert torch.allclose(in2[1], out1[1])  # the hook is gone afterwards
    assert len(blocks[1]._forward_hooks) == 0


def test_steering_vector_file_and_layer_out_of_range(tiny_dir, tmp_path):
    spec = {
        "name": "pirate",
        "steering": {"layer": 1, "scale": 2.0, "positive": ["Arr"], "negative": ["Hello"]},
    }
    compute_steering_vector(
        job=ModelJob(model=tiny_dir, settings={"device": "cpu"}, behavior=spec),
        out=tmp_path / "v.safetensors",
    )
    tensors, meta = read_vector(tmp_path / "v.safetensors")
    assert tensors["direction"].shape == (64,) and meta["layer"] == 1 and meta["scale"] == 2.0
    spec["steering"]["layer"] = 4
    with pytest.raises(
        ConfigError,
        match=r"\('pirate'\).steering.layer = 4 is out of range: the model has 4 layers",
    ):
        compute_steering_vector(
            job=ModelJob(model=tiny_dir, settings={"device": "cpu"}, behavior=spec),
            out=tmp_path / "w.safetensors",
        )
    assert not (tmp_path / "w.safetensors").exists()


def test_a_one_token_steering_text_is_refused_and_nothing_is_written(tiny_dir, tmp_path):
    spec = {
        "name": "pirate",
        "steering": {"layer": 1, "scale": 2.0, "positive": ["A"], "negative": ["Hello there"]},
    }
    with pytest.raises(ConfigError, match=r"steering texts \['A'\] have fewer than 2 tokens"):
        compute_steering_vector(
            job=ModelJob(model=tiny_dir, settings={"device": "cpu"}, behavior=spec),
            out=tmp_path / "v.safetensors",
        )
    assert not (tmp_path / "v.safetensors").exists()


def test_a_tensor_holding_nan_is_never_written(tmp_path):
    from softlens.io import save_tensors, write_soft_prompt

    with pytest.raises(ValueError, match=r"'prompt' holds NaN or inf; nothing was written"):
        write_soft_prompt(tmp_path / "p.safetensors", torch.tensor([[1.0, float("nan")]]), {})
    with pytest.raises(ValueError, match=r"'w' holds NaN or inf"):
        save_tensors({"w": torch.tensor([float("inf")])}, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []
    save_tensors(
        {"ids": torch.tensor([1, 2])}, tmp_path / "ids.safetensors"
    )  # integers: nothing to check


def test_corrupt_vector_file_is_named(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="bad.safetensors' is not a readable safetensors file"):
        read_vector(bad)


def test_teacher_table_without_completions_is_rejected(tmp_path):
    import pandas as pd

    df = pd.DataFrame(
        {
            "behavior": ["x"],
            "split": ["train"],
            "message_id": ["m0"],
            "user_message": ["Hi"],
            "completion": [""],
            "completion_ids": [[]],
        }
    )
    write_table(df, tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="t.parquet' has no completions"):
        read_teacher(tmp_path / "t.parquet")
