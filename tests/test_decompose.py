"""Log-prob caches and decompositions on the tiny model."""

import numpy as np
import pandas as pd
import pytest
import torch

from softlens.decompose import (
    Caches,
    PathSettings,
    decline_per_sigma,
    dictionary_atoms,
    noise_verdict,
    run_fit,
    run_noise,
)
from softlens.head import OutputHead, read_head
from softlens.io import read_aligned, read_states, write_states
from softlens.job import ModelJob
from softlens.logprobs import run_head, run_sources, score
from softlens.slot import HardPrompt, PromptSlot

MESSAGES = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "Hi",
    "What is gravity?",
    "How do bees make honey?",
]
DICTIONARY = pd.DataFrame(
    {
        "atom": ["spanish", "concise", "pirate", "cats"],
        "category": ["x"] * 4,
        "prompt": ["Respond in Spanish.", "Be concise.", "Talk like a pirate.", "Talk about cats."],
    }
)


@pytest.fixture(scope="module")
def teacher(tiny_lm, tmp_path_factory):
    """A teacher table whose completions are what the model says with "Respond in Spanish."."""
    from softlens.io import write_table
    from softlens.teacher import GenerationSettings, teacher_table

    msgs = pd.DataFrame(
        {
            "message_id": [f"m{i}" for i in range(len(MESSAGES))],
            "user_message": MESSAGES,
            "split": ["train", "train", "train", "train", "test", "test"],
        }
    )
    slot = PromptSlot.for_model(tiny_lm)
    table = teacher_table(
        tiny_lm,
        slot,
        HardPrompt("Respond in Spanish."),
        msgs,
        "spanish",
        GenerationSettings(max_new_tokens=5),
    )
    path = tmp_path_factory.mktemp("teacher") / "spanish.parquet"
    write_table(table, path)
    return path, table


def test_cached_scoring_equals_a_plain_forward(tiny_lm, teacher):
    _, table = teacher
    slot = PromptSlot.for_model(tiny_lm)
    completions = [list(c) for c in table["completion_ids"]]
    states, lse, rows = score(
        tiny_lm, slot, HardPrompt("Be concise."), MESSAGES, completions, positions=4, batch_size=4
    )
    got = OutputHead.from_model(tiny_lm.model).log_probs(
        torch.from_numpy(states), torch.from_numpy(lse)
    )
    b = slot.batch(HardPrompt("Be concise."), MESSAGES, [c[:4] for c in completions])
    with torch.no_grad():
        lp = torch.log_softmax(tiny_lm.model(**b.model_inputs()).logits, -1)
    idx, mask = b.scored_positions(4)
    ref = torch.cat([lp[i, idx[i][mask[i]]] for i in range(len(MESSAGES))])
    assert got.shape == ref.shape and (got - ref.double()).abs().max() < 1e-5
    assert states.shape == (
        len(rows),
        tiny_lm.model.config.hidden_size,
    )  # d numbers a context, not V
    assert [tuple(r) for r in rows[:3]] == [(0, 0), (0, 1), (0, 2)]


def test_messages_batch_by_length_and_come_back_in_their_own_order(tiny_lm, teacher):
    """Batches group messages of similar length (less padding), yet every cache row and every
    teacher distribution is the message's own, in file order: what the message scores alone."""
    from softlens.logprobs import length_batches
    from softlens.scoring import distributions

    _, table = teacher
    slot = PromptSlot.for_model(tiny_lm)
    batches = length_batches(slot, MESSAGES, 4)
    lengths = [len(slot.tokenize(m)) for m in MESSAGES]
    order = np.concatenate(batches)
    assert sorted(order) == list(range(len(MESSAGES))) and list(order) != sorted(order)
    assert [lengths[i] for i in order] == sorted(lengths)
    completions = [list(c) for c in table["completion_ids"]]
    fed = [c[:3] for c in completions]
    prompt = HardPrompt("Be concise.")
    states, lse, rows = score(tiny_lm, slot, prompt, MESSAGES, completions, 4, 4)
    logp, _ = distributions(tiny_lm, slot, prompt, MESSAGES, fed, 4, 4)
    assert list(rows[:, 0]) == sorted(rows[:, 0])
    for i in range(len(MESSAGES)):  # each message alone: no batch, no order to undo
        x, c, _ = score(tiny_lm, slot, prompt, MESSAGES[i : i + 1], completions[i : i + 1], 4, 1)
        mine = rows[:, 0] == i
        assert np.abs(states[mine] - x).max() < 1e-5 and np.abs(lse[mine] - c).max() < 1e-5
        alone, _ = distributions(tiny_lm, slot, prompt, MESSAGES[i : i + 1], fed[i : i + 1], 4, 1)
        assert (logp[i] - alone[0]).abs().max() < 1e-5


def test_contents_sharing_the_text_before_the_slot_score_as_plain_forwards(tiny_lm, teacher):
    """One SharedPrefix across contents (and across slot positions, whose text before the slot
    differs) gives each content's plain-forward log-probs: the shared cache is continued, never
    reused for a different text."""
    from softlens.logprobs import SharedPrefix

    _, table = teacher
    completions = [list(c) for c in table["completion_ids"]]
    head, prefixes = OutputHead.from_model(tiny_lm.model), SharedPrefix(tiny_lm)
    for position in ("user_start", "system", "user_start"):
        slot = PromptSlot(tiny_lm.tokenizer, tiny_lm.embeddings, position, " ")
        for content in (HardPrompt("Be concise."), HardPrompt("Talk like a pirate."), None):
            states, lse, _ = score(
                tiny_lm,
                slot,
                content,
                MESSAGES,
                completions,
                positions=4,
                batch_size=4,
                prefixes=prefixes,
            )
            got = head.log_probs(torch.from_numpy(states), torch.from_numpy(lse))
            b = slot.batch(content, MESSAGES, [c[:4] for c in completions])
            with torch.no_grad():
                lp = torch.log_softmax(tiny_lm.model(**b.model_inputs()).logits, -1)
            idx, mask = b.scored_positions(4)
            ref = torch.cat([lp[i, idx[i][mask[i]]] for i in range(len(MESSAGES))])
            assert (got - ref.double()).abs().max() < 1e-5, (position, content)


def test_targets_read_from_the_behaviours_cache_are_the_ones_the_model_computes(
    tiny_dir, teacher, tmp_path
):
    """A job given the cached (teacher, unprompted) targets gets what it would compute itself,
    for any split, subset of rows and number of positions the cache holds; asked for more, or
    for the teacher's layer states, it computes them."""
    path, table = teacher
    spec = {"name": "spanish", "instruction": "Respond in Spanish."}
    files = [str(tmp_path / "target.parquet"), str(tmp_path / "unprompted.parquet")]
    run_sources(
        job=ModelJob(model=tiny_dir, settings={"device": "cpu"}, behavior=spec, teacher=path),
        sources={
            "target": {"kind": "hard", "text": spec["instruction"]},
            "unprompted": {"kind": "unprompted"},
        },
        outputs=dict(zip(["target", "unprompted"], files)),
        positions=4,
    )
    plain = ModelJob(model=tiny_dir, settings={"device": "cpu"}, behavior=spec, teacher=path)
    cached = ModelJob(
        model=tiny_dir, settings={"device": "cpu"}, behavior=spec, teacher=path, targets=files
    )
    for split, positions, rows in [
        ("train", 4, None),
        ("test", 3, None),
        ("train", 2, table.iloc[1:3]),
    ]:
        teacher_t, base_t = plain.targets(split, positions, rows=rows)
        assert (teacher_t.logp - base_t.logp)[teacher_t.mask].abs().max() > 1e-3  # told apart
        for want, got in zip(
            plain.targets(split, positions, rows=rows), cached.targets(split, positions, rows=rows)
        ):
            assert got.messages == want.messages and got.fed == want.fed
            assert torch.equal(got.tokens, want.tokens) and torch.equal(got.mask, want.mask)
            assert (got.logp - want.logp)[want.mask].abs().max() < 1e-5
            assert torch.isfinite(got.logp).all()
    # more positions than cached, or the teacher's states: computed, as before
    for want, got in zip(plain.targets("train", 5), cached.targets("train", 5)):
        assert torch.equal(got.logp, want.logp)
    got, _ = cached.targets("train", 4, layer=1)
    assert got.state is not None


def cache_set(d, atoms, decomposed="target"):
    """Every cache in `d` as a job's declared inputs."""
    return Caches(
        head=str(d / "head.safetensors"),
        files=tuple(sorted(map(str, d.glob("*.parquet")))),
        atoms=atoms,
        decomposed=decomposed,
    )


@pytest.fixture(scope="module")
def caches(tiny_dir, teacher, tmp_path_factory):
    path, _ = teacher
    d = tmp_path_factory.mktemp("logprobs")
    spec = {"name": "spanish", "instruction": "Respond in Spanish."}
    sources = {
        f"atom-{a}": {"kind": "hard", "text": t}
        for a, t in zip(DICTIONARY["atom"], DICTIONARY["prompt"])
    }
    sources |= {
        "target": {"kind": "hard", "text": spec["instruction"]},
        "unprompted": {"kind": "unprompted"},
    }
    sources |= {
        f"noise-{s:g}-0": {"kind": "noisy", "text": spec["instruction"], "sigma": s, "seed": 0}
        for s in (0.5, 2.0)
    }
    job = ModelJob(model=tiny_dir, settings={"device": "cpu"}, teacher=path)
    run_sources(
        job=job, sources=sources, outputs={n: str(d / f"{n}.parquet") for n in sources}, positions=3
    )
    run_head(model=tiny_dir, settings={"device": "cpu"}, out=d / "head.safetensors")
    return d, spec


def test_caches_align_and_the_instruction_atom_equals_the_target(caches):
    d, _ = caches
    keys, X, C = read_aligned(
        [d / "atom-spanish.parquet", d / "target.parquet", d / "unprompted.parquet"]
    )
    assert list(keys.columns) == ["message_id", "split", "position"] and set(keys["split"]) == {
        "train",
        "test",
    }
    assert (
        np.array_equal(X[0], X[1]) and np.array_equal(C[0], C[1]) and not np.array_equal(X[0], X[2])
    )
    head = read_head(d / "head.safetensors")
    p = head.log_probs(torch.from_numpy(X[2]), torch.from_numpy(C[2])).exp()
    assert torch.allclose(p.sum(-1), torch.ones(len(keys), dtype=torch.float64), atol=1e-5)


def _rewrite(path, keys, states, lse):
    teacher = pd.DataFrame(
        {"message_id": keys["message_id"].to_numpy(), "split": keys["split"].to_numpy()}
    )
    rows = np.stack([np.arange(len(keys)), keys["position"].to_numpy()], 1)
    write_states(path, teacher, states, lse, rows, {})


def test_misaligned_caches_are_rejected(caches, tmp_path):
    d, _ = caches
    keys, states, lse = read_states(d / "target.parquet")
    keys["message_id"] = keys["message_id"][::-1].to_numpy()
    _rewrite(tmp_path / "shuffled.parquet", keys, states, lse)
    with pytest.raises(ValueError, match="shuffled.parquet' does not align with .*target.parquet"):
        read_aligned([d / "target.parquet", tmp_path / "shuffled.parquet"])


def test_nan_states_are_refused_with_the_file_named(caches, tmp_path):
    d, _ = caches
    keys, states, lse = read_states(d / "target.parquet")
    states[0, 0] = np.nan
    with pytest.raises(ValueError, match="nan.parquet'.*NaN or inf"):
        _rewrite(tmp_path / "nan.parquet", keys, states, lse)
    assert not (tmp_path / "nan.parquet").exists()


def test_a_dense_cache_from_before_is_named_for_rebuilding(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table(
            {
                "message_id": ["m0"],
                "split": ["train"],
                "position": [0],
                "logprobs": pa.FixedSizeListArray.from_arrays(pa.array([0.0, -1.0]), 2),
            }
        ),
        tmp_path / "old.parquet",
    )
    with pytest.raises(ValueError, match="old.parquet' is not a factored log-prob cache"):
        read_states(tmp_path / "old.parquet")


def test_phase0_recovers_the_instruction_and_leave_one_out_cannot(caches, tmp_path):
    d, spec = caches
    atoms = dictionary_atoms(spec, DICTIONARY)
    assert atoms.loc[atoms["is_target"], "source"].tolist() == ["target"]
    atoms["excluded_at"] = np.where(
        atoms["is_target"], "lexical", np.where(atoms["atom"] == "pirate", "reveal", "")
    )
    df = run_fit(
        caches=cache_set(d, atoms),
        behavior="spanish",
        settings=PathSettings(),
        levels=("none", "lexical", "reveal"),
        out=tmp_path / "fit.parquet",
    )
    sel = df[df["selected"]]
    full, loo, reveal = (sel[sel["exclusion"] == x] for x in ("none", "lexical", "reveal"))
    top = full.loc[full["weight"].idxmax()]
    assert top["atom"] == "spanish" and top["is_target"] and top["weight"] >= 0.9
    assert full["explained_kl_test"].iloc[0] >= 0.99
    assert (
        "spanish" not in set(loo["atom"])
        and loo["explained_kl_test"].iloc[0] < full["explained_kl_test"].iloc[0]
    )
    assert set(reveal["atom"]) == {"concise", "cats"} and set(reveal["excluded_atoms"]) == {
        "spanish, pirate"
    }
    assert df.groupby(["exclusion"])["lambda_index"].nunique().tolist() == [20, 20, 20]
    assert (df["status"] == "converged").all()
    plugin = df.groupby("atom")[
        "plugin_closure_test"
    ].first()  # each atom alone against the teacher
    assert (
        plugin["spanish"] == pytest.approx(1.0, abs=1e-4) and (plugin.drop("spanish") < 0.999).all()
    )
    for part in (
        full,
        loo,
        reveal,
    ):  # the test score carries its interval; lambda came from the folds
        r = part.iloc[0]
        assert r["ci_low"] <= r["explained_kl_test"] <= r["ci_high"]
        assert np.isfinite(r["explained_kl_cv"])


def test_lambda_is_chosen_by_cross_validation_not_by_the_test_messages(caches):
    """Scrambling the test rows' target changes every test score and not the selected lambda."""
    import softlens.decompose as decompose

    d, spec = caches
    atoms = dictionary_atoms(spec, DICTIONARY)
    keys, X, C = read_aligned(
        [f"{d}/{s}.parquet" for s in atoms["source"]]
        + [f"{d}/target.parquet", f"{d}/unprompted.parquet"]
    )
    head, K = read_head(d / "head.safetensors"), len(atoms)
    settings = PathSettings(path_length=20)
    honest = decompose.fit_path(
        head,
        (X[:K], C[:K]),
        (X[K], C[K]),
        (X[K + 1], C[K + 1]),
        keys,
        list(atoms["atom"]),
        settings,
    )
    test = (keys["split"] == "test").to_numpy()
    cats = list(atoms["atom"]).index("cats")
    scrambled_x, scrambled_c = X[K].copy(), C[K].copy()
    scrambled_x[test], scrambled_c[test] = (
        X[cats][test],
        C[cats][test],
    )  # the test rows' target: another prompt
    scrambled = decompose.fit_path(
        head,
        (X[:K], C[:K]),
        (scrambled_x, scrambled_c),
        (X[K + 1], C[K + 1]),
        keys,
        list(atoms["atom"]),
        settings,
    )
    pick = lambda df: int(df.loc[df["selected"], "lambda_index"].iloc[0])  # noqa: E731
    assert pick(honest) == pick(scrambled)
    assert not np.allclose(honest["explained_kl_test"], scrambled["explained_kl_test"])
    assert np.allclose(honest["explained_kl_cv"], scrambled["explained_kl_cv"])


def test_noise_fits_report_distances_and_sigma_zero_is_the_clean_target(caches, tmp_path):
    d, spec = caches
    noise = {
        "noise-0-0": {"sigma": 0.0, "seed": 0},
        "noise-0.5-0": {"sigma": 0.5, "seed": 0},
        "noise-2-0": {"sigma": 2.0, "seed": 0},
    }
    df = run_noise(
        caches=cache_set(d, dictionary_atoms(spec, DICTIONARY)),
        behavior="spanish",
        noise_sources=noise,
        settings=PathSettings(),
        out=tmp_path / "n.parquet",
    )
    per = (
        df[df["selected"]]
        .groupby("sigma")[["kl_noisy_clean", "kl_noisy_base", "explained_kl_test"]]
        .first()
    )
    assert (
        abs(per.loc[0.0, "kl_noisy_clean"]) < 1e-8
        and per.loc[2.0, "kl_noisy_clean"] > per.loc[0.5, "kl_noisy_clean"] > 0
    )
    assert per.loc[0.0, "explained_kl_test"] >= 0.99


def test_verdict_rule():
    sig = [0, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2]
    smooth = pd.DataFrame({"sigma": sig, "explained_kl_test": np.linspace(1.0, 0.3, 8)})
    cliff = pd.DataFrame(
        {"sigma": sig, "explained_kl_test": [1, 0.99, 0.98, 0.97, 0.3, 0.28, 0.27, 0.26]}
    )
    flat = pd.DataFrame({"sigma": sig, "explained_kl_test": [1, 1, 1, 1, 0.97, 0.97, 0.97, 0.97]})
    assert noise_verdict(smooth) == "smooth"
    assert noise_verdict(cliff) == "phase transition"
    assert noise_verdict(flat) == "smooth"  # a small total decline is never a transition


def test_decline_per_sigma_is_per_seed_and_per_unit_sigma():
    curve = pd.DataFrame(
        {
            "behavior": "spanish",
            "seed": [1, 0, 0, 0, 1, 1],
            "sigma": [0.5, 0, 0.5, 1.0, 0, 1.0],
            "explained_kl_test": [0.8, 1.0, 0.9, 0.5, 1.0, 0.7],
        }
    )
    got = decline_per_sigma(curve)
    # seed 0: (1.0 - 0.9) / 0.5 = 0.2, then (0.9 - 0.5) / 0.5 = 0.8; seed 1: 0.4, then 0.2; NaN at
    # sigma 0
    assert got.index.equals(curve.index)
    assert np.allclose(got.to_numpy(), [0.4, np.nan, 0.2, 0.8, np.nan, 0.2], equal_nan=True)
