"""Sparse autoencoders: the activation store (captured while generating), SAE training, files in
the sae-lens layout, reading soft prompts through SAEs, the tables, and their bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from softlens.activations import (
    CorpusSettings,
    collect_shard,
    corpus_prompts,
    default_layers,
    generate_batch,
    read_layer,
    read_tokens,
    user_turn_start,
    write_shard,
)
from softlens.config import ConfigError, validate_config
from softlens.sae import (
    SAESettings,
    SparseAutoencoder,
    assess,
    feature_contexts,
    held_out_split,
    load_sae,
    save_sae,
    train_sae,
)
from softlens.sae_reading import jaccard, read_prompt
from softlens.slot import PromptSlot
from softlens.steering import captured
from softlens.teacher import eos_ids

MESSAGES = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do plants make food?",
    "Tell me about the lazy dog.",
]


@pytest.fixture(scope="module")
def lm(sharp_lm):
    return sharp_lm


@pytest.fixture(scope="module")
def slot(lm):
    return PromptSlot.for_model(lm)


# --- the activation store
# -------------------------------------------------------------------------------


def test_default_layers_are_a_quarter_half_and_three_quarters_deep():
    assert default_layers(30) == [7, 15, 22]
    assert default_layers(36) == [9, 18, 27]
    assert default_layers(4) == [1, 2, 3]


def test_activations_captured_while_generating_equal_a_forward_pass_over_the_kept_tokens(lm, slot):
    s = CorpusSettings(max_new_tokens=6, batch_size=4, temperature=1.0, top_p=1.0)
    texts = [
        "Be concise. " + MESSAGES[0],
        MESSAGES[1],
        MESSAGES[2],
    ]  # different lengths: left padding
    torch.manual_seed(0)
    ids, acts = generate_batch(lm, slot, texts, [0, 2], s, eos_ids(lm))
    before = slot.tokenize(
        PromptSlot(slot.tokenizer, slot.embeddings, "user_start", "").texts("", True)[0]
    )
    assert len(before) == user_turn_start(slot)
    for text, t, a in zip(texts, ids, acts):
        assert lm.tokenizer.decode(t).startswith(text)  # the store starts at the user's content
        with captured(lm.model, [0, 2]) as rec:
            lm.model(input_ids=torch.tensor([before + t], device=lm.device))
        for layer in (0, 2):
            ref = rec[layer][0][0, len(before) :]
            assert a[layer].shape == ref.shape == (len(t), lm.embeddings.weight.shape[1])
            torch.testing.assert_close(a[layer], ref, atol=1e-4, rtol=1e-4)


def test_a_shard_holds_its_share_in_document_order_and_is_the_same_for_the_same_seed(
    lm, slot, tmp_path
):
    s = CorpusSettings(tokens=120, shards=2, max_new_tokens=5, batch_size=4, seed=3)
    prompts = corpus_prompts(MESSAGES, ["Respond in Spanish.", "Be concise."], s.seed)
    assert sorted(prompts) == sorted(
        MESSAGES + [f"{i} {m}" for i in ["Respond in Spanish.", "Be concise."] for m in MESSAGES]
    )
    tensors, docs = collect_shard(lm, slot, prompts, [1, 3], s, shard=1, first_doc=1000)
    again, _ = collect_shard(lm, slot, prompts, [1, 3], s, shard=1, first_doc=1000)
    assert all(torch.equal(tensors[k], again[k]) for k in tensors)
    assert len(tensors["doc"]) >= 60 and int(docs["n_tokens"].sum()) == len(tensors["doc"])
    doc, pos = tensors["doc"].numpy(), tensors["position"].numpy()
    for d, n in zip(docs["doc"], docs["n_tokens"]):
        assert (pos[doc == d] == np.arange(n)).all()
    write_shard(
        tensors, docs, tmp_path / "s.safetensors", tmp_path / "s.docs.parquet", {"layers": [1, 3]}
    )
    assert torch.equal(read_layer([tmp_path / "s.safetensors"], 3), tensors["layer3"].float())
    with pytest.raises(ValueError, match="has no layer 2"):
        read_layer([tmp_path / "s.safetensors"], 2)
    assert (
        read_tokens([tmp_path / "s.safetensors"])["token_ids"].tolist()
        == tensors["token_ids"].tolist()
    )


def test_capturing_a_layer_the_model_lacks_names_it(lm):
    with pytest.raises(ValueError, match=r"layers \[9\] out of range"):
        with captured(lm.model, [1, 9]):
            pass


# --- training
# -------------------------------------------------------------------------------------------


def sparse_data(n=12000, d=24, features=96, active=3, seed=0):
    """Rows that are sparse non-negative combinations of known unit directions (plus an offset)."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(features, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(features, generator=g)[:active] for _ in range(n)])
    coef = torch.rand(n, active, generator=g) * 2 + 1
    x = (coef[..., None] * atoms[idx]).sum(1) + torch.randn(d, generator=g) * 0.5
    return x, atoms


def test_a_topk_sae_learns_a_sparse_dictionary_and_recovers_its_directions():
    x, atoms = sparse_data()
    s = SAESettings(expansion=8, k=4, epochs=8, batch_size=256, lr=4e-3, dead_after=2000)
    train, test = held_out_split(x, s.held_out)
    assert len(test) == 600 and torch.equal(torch.cat([train, test]), x)
    sae, curve = train_sae(train, s)
    result, counts = assess(sae, x, test)
    assert sae.d_sae == 8 * x.shape[1]
    assert result["fvu"] < 0.2 and result["l0"] <= 4
    assert curve["mse"].iloc[-20:].mean() < 0.3 * curve["mse"].iloc[:5].mean()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae))
    best = (atoms @ sae.W_dec.T).max(dim=1).values  # each true direction's best-aligned decoder row
    assert (best > 0.9).float().mean() > 0.8
    assert 0 <= result["dead_fraction"] < 1 and result["dead_fraction"] == float(
        (counts == 0).float().mean()
    )


def test_training_is_deterministic_and_a_killed_run_resumes_to_the_same_sae(tmp_path, monkeypatch):
    import softlens.sae as sae_module

    x, _ = sparse_data(n=3000)
    s = SAESettings(expansion=4, k=4, epochs=2, batch_size=128, checkpoint_every=5)
    reference, ref_curve = train_sae(x, s)
    again, _ = train_sae(x, s)
    assert torch.equal(reference.W_enc, again.W_enc)

    real, calls = sae_module.training_loss, {"n": 0}

    def dies_at_step_13(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    ckpt, identity = tmp_path / "sae.ckpt", {"layer": 1}
    monkeypatch.setattr(sae_module, "training_loss", dies_at_step_13)
    with pytest.raises(KeyboardInterrupt):
        train_sae(x, s, ckpt, identity)
    monkeypatch.setattr(sae_module, "training_loss", real)
    assert ckpt.is_file()
    resumed, curve = train_sae(x, s, ckpt, identity)
    torch.testing.assert_close(resumed.W_enc, reference.W_enc)
    torch.testing.assert_close(resumed.W_dec, reference.W_dec)
    assert len(curve) == len(ref_curve)
    with pytest.raises(ConfigError, match="different config"):
        train_sae(x, s, ckpt, {"layer": 2})


# --- files
# ----------------------------------------------------------------------------------------------


def test_an_sae_round_trips_through_the_sae_lens_layout(tmp_path):
    x, _ = sparse_data(n=500)
    sae, _ = train_sae(x, SAESettings(expansion=2, k=4, epochs=1, batch_size=100))
    save_sae(sae, tmp_path / "sae", {"layer": 3})
    loaded, cfg = load_sae(tmp_path / "sae")
    assert cfg["layer"] == 3 and cfg["architecture"] == "topk"
    torch.testing.assert_close(loaded(x), sae(x))


def test_a_pretrained_jumprelu_or_standard_sae_encodes_with_its_own_activation(tmp_path):
    from safetensors.torch import save_file

    d, f = 6, 10
    g = torch.Generator().manual_seed(0)
    w = {
        "W_enc": torch.randn(d, f, generator=g),
        "b_enc": torch.randn(f, generator=g),
        "W_dec": torch.randn(f, d, generator=g),
        "b_dec": torch.randn(d, generator=g),
        "threshold": torch.rand(f, generator=g),
    }
    x = torch.randn(4, d, generator=g)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    uncentred = (
        x @ w["W_enc"] + w["b_enc"]
    )  # Gemma Scope's JumpReLU SAEs do not subtract b_dec first
    cases = [
        ("jumprelu", True, torch.relu(pre) * (pre > w["threshold"])),
        ("jumprelu", False, torch.relu(uncentred) * (uncentred > w["threshold"])),
        ("standard", True, torch.relu(pre)),
    ]
    for arch, centre, expected in cases:
        out = tmp_path / f"{arch}-{centre}"
        out.mkdir()
        save_file(w, str(out / "sae_weights.safetensors"))
        (out / "cfg.json").write_text(
            json.dumps(
                {
                    "architecture": arch,
                    "d_in": d,
                    "d_sae": f,
                    "apply_b_dec_to_input": centre,
                    "normalize_activations": "none",
                }
            )
        )
        sae, _ = load_sae(out)
        torch.testing.assert_close(sae.encode(x), expected)
        torch.testing.assert_close(sae.decode(sae.encode(x)), expected @ w["W_dec"] + w["b_dec"])
    (tmp_path / "standard-True" / "cfg.json").write_text(
        json.dumps({"normalize_activations": "layer_norm"})
    )
    with pytest.raises(ValueError, match="normalize_activations = 'layer_norm'"):
        load_sae(tmp_path / "standard-True")
    (tmp_path / "standard-True" / "cfg.json").write_text(json.dumps({"architecture": "gated"}))
    with pytest.raises(ValueError, match="'gated' is not supported"):
        load_sae(tmp_path / "standard-True")
    with pytest.raises(FileNotFoundError, match="lacks cfg.json"):
        load_sae(tmp_path)


def test_top_contexts_are_the_tokens_before_each_top_activation_in_its_own_document(lm):
    tokens = pd.DataFrame(
        {
            "token_ids": [5, 6, 7, 8, 9, 10],
            "doc": [0, 0, 0, 1, 1, 1],
            "position": [0, 1, 2, 0, 1, 2],
        }
    )
    sae = SparseAutoencoder(2, 2, "relu")
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    table = feature_contexts(sae, x, tokens, lm.tokenizer, n=2, window=5)
    top0 = table[(table["feature"] == 0) & (table["rank"] == 0)].iloc[0]
    assert top0["activation"] == 3 and top0["doc"] == 1
    assert top0["context"] == lm.tokenizer.decode([8]) and top0["token"] == lm.tokenizer.decode([9])
    second = table[(table["feature"] == 0) & (table["rank"] == 1)].iloc[0]
    assert second["context"] == lm.tokenizer.decode([5])  # never reaches back into another document
    assert len(table[table["feature"] == 1]) == 1  # inactive rows are not contexts


# --- reading
# --------------------------------------------------------------------------------------------


def test_a_soft_prompt_equal_to_the_instructions_embeddings_reads_exactly_as_the_instruction(
    lm, slot
):
    torch.manual_seed(0)
    d = lm.embeddings.weight.shape[1]
    saes = {layer: SparseAutoencoder(d, 8 * d, "topk", k=8) for layer in (1, 2)}
    for sae in saes.values():
        torch.nn.init.normal_(sae.W_enc, std=0.2)
        torch.nn.init.normal_(sae.W_dec, std=0.2)
    instruction = "Respond in Spanish."
    ids = torch.tensor(slot.tokenize(instruction))
    own = lm.embeddings(ids).float()
    table = read_prompt(lm, slot, saes, own, ["___"], instruction, draws=2, seed=0)
    assert len(table) == 2
    np.testing.assert_allclose(table["recon_error"], table["instruction_recon_error"], rtol=1e-5)
    assert (table["jaccard_with_instruction"] == 1).all() and (
        table["n_shared"] == table["n_instruction"]
    ).all()

    other = read_prompt(
        lm, slot, saes, torch.randn(3, d) * 5, ["Be ___.", "___."], instruction, draws=2, seed=0
    )
    assert list(other["frame"]) == ["Be ___.", "Be ___.", "___.", "___."]
    assert (other["jaccard_with_instruction"] < 1).all()
    assert (other["baseline_recon_error"] > 0).all() and other["baseline_jaccard"].between(
        0, 1
    ).all()
    none = read_prompt(lm, slot, saes, own, ["___"], None, draws=1, seed=0)
    assert none["jaccard_with_instruction"].isna().all() and none["baseline_jaccard"].isna().all()


def test_jaccard_of_feature_sets():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard({1}, {2}) == 0
    assert np.isnan(jaccard(set(), set()))


# --- tables and config
# ----------------------------------------------------------------------------------


def reading_rows(behavior, variant, seed, errors, shared=(1, 2)):
    return pd.DataFrame(
        [
            {
                "behavior": behavior,
                "variant": variant,
                "seed": seed,
                "frame": "___",
                "layer": layer,
                "recon_error": e,
                "baseline_recon_error": 0.1,
                "instruction_recon_error": 0.05,
                "jaccard_with_instruction": 0.2,
                "baseline_jaccard": 0.1,
                "n_active": 4,
                "n_instruction": 4,
                "n_shared": len(shared),
                "shared_features": list(shared),
                "active_features": [1, 2, 3],
                "norm": 1.0,
            }
            for layer, e in zip((3, 6, 9), errors)
        ]
    )


def test_the_manifold_verdict_compares_prepend_and_contextualised_seed_by_seed(tmp_path):
    from softlens import tables
    from softlens.io import write_table

    paths = []
    parts = [
        reading_rows("a", "prepend", 0, [0.5, 0.9, 0.3]),
        reading_rows("a", "contextualised", 0, [0.2, 0.3, 0.4]),
        reading_rows("a", "prepend", 1, [0.5, 0.9, 0.3]),
        reading_rows("a", "contextualised", 1, [0.2, 0.3, 0.2]),
    ]
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"r{i}.parquet")
        write_table(part, paths[-1])
    feats, ctxs = [], []
    for layer in (3, 6, 9):
        feats.append(tmp_path / f"f{layer}.parquet")
        write_table(
            pd.DataFrame(
                {"layer": layer, "feature": [1, 2, 3], "count": 1, "frequency": [0.1, 0.2, 0.3]}
            ),
            feats[-1],
            metadata={
                "evaluation": {"fvu": 0.2, "dead_fraction": 0.0},
                "layer": layer,
                "architecture": "topk",
                "d_in": 4,
                "d_sae": 32,
                "k": 4,
            },
        )
        ctxs.append(tmp_path / f"c{layer}.parquet")
        write_table(
            pd.DataFrame(
                {
                    "feature": [1, 2],
                    "rank": 0,
                    "activation": 1.0,
                    "doc": 0,
                    "token": "x",
                    "context": "ab",
                    "layer": layer,
                }
            ),
            ctxs[-1],
        )
    table, training, features, manifold = tables.sae(
        inputs={"readings": paths, "features": feats, "contexts": ctxs}
    )
    assert {
        "behavior",
        "variant",
        "layer",
        "recon_error",
        "baseline_recon_error",
        "jaccard_with_instruction",
    } <= set(table.columns)
    verdict = manifold.set_index("layer")["closer_to_manifold"].to_dict()
    assert verdict == {3: "contextualised", 6: "contextualised", 9: "mixed"}
    assert manifold.set_index("layer")["middle_layer"].to_dict() == {3: False, 6: True, 9: False}
    assert list(training["layer"]) == [3, 6, 9] and "dead_fraction" in training
    assert set(features["feature"]) == {1, 2} and (features["n_readings"] == 2).all()
    assert features["example"].str.contains(r"ab\[\[x\]\]").all()


def test_sae_config_errors_name_the_key(default_config, schema):
    cfg = dict(default_config, sae={"behaviors": ["pirate_steer"]})  # not trained by the default
    with pytest.raises(ConfigError, match="sae.behaviors: 'pirate_steer'"):
        validate_config(cfg, schema)
    cfg = dict(
        default_config, sae={"layers": [3], "pretrained": {"5": {"release": "r", "sae_id": "s"}}}
    )
    with pytest.raises(ConfigError, match="sae.pretrained: layer 5"):
        validate_config(cfg, schema)
    cfg = dict(default_config, sae={"train": {"k": 0}})
    with pytest.raises(ConfigError, match="k"):
        validate_config(cfg, schema)
    cfg = dict(default_config, sae={"corpus": {"instructions": "/nonexistent/corpus.tsv"}})
    with pytest.raises(
        ConfigError, match="sae.corpus.instructions: file '/nonexistent/corpus.tsv' does not exist"
    ):
        validate_config(cfg, schema)
