"""Dictionary discovery: pools (templates, deduplication, the hidden instruction), the screening
gradient, pursuit, and the whole screen -> pursuit chain on the tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from softlens.config import ConfigError
from softlens.decompose import PathSettings, dictionary_atoms, run_fit
from softlens.discovery import (
    PursuitSettings,
    ScreenSettings,
    Residual,
    pursue,
    run_pursuit,
    run_screen,
    screening_scores,
)
from softlens.head import OutputHead
from softlens.io import write_table
from softlens.logprobs import run_head, run_sources
from softlens.poe import FactoredProblem
from softlens.pool import build_pool, jaccard, proposal_requests, shard, templated
from softlens.slot import HardPrompt, PromptSlot

PARTS = {"verbs": ["Respond", "Answer"], "languages": ["in Spanish", "in French"], "styles": ["briefly"],
         "audiences": ["for a child"], "formats": ["as a list"]}


# --- pools -------------------------------------------------------------------------------------------

def test_templated_pool_is_distinct_seeded_and_every_item_has_a_verb():
    a = templated(PARTS, 20, seed=0)
    assert len(a) == len(set(a)) == 20
    assert a == templated(PARTS, 20, seed=0) and a != templated(PARTS, 20, seed=1)
    assert all(t.split()[0] in PARTS["verbs"] and t.endswith(".") for t in a)
    assert len(templated(PARTS, 10_000, seed=0)) == 2 * (3 * 2 * 2 * 2 - 1)  # the whole product, bare verbs out


def test_templated_pool_without_verbs_names_the_key():
    with pytest.raises(ConfigError, match="templates.verbs"):
        templated({"verbs": [], "languages": ["in Spanish"]}, 5, 0)


def test_proposal_request_needs_its_category_field():
    assert proposal_requests(["tone"], 2, "About {category}.") == [("tone", "About tone."), ("tone", "About tone.")]
    with pytest.raises(ConfigError, match="request"):
        proposal_requests(["tone"], 1, "no field")


def test_jaccard_is_the_word_set_overlap():
    s = jaccard(["Respond in Spanish.", "cats"], ["respond, IN spanish please"])
    assert s[0, 0] == pytest.approx(3 / 4) and s[1, 0] == 0


def test_pool_removes_duplicates_near_duplicates_and_the_hidden_instruction_with_reasons():
    cands = pd.DataFrame({"text": ["Respond in Spanish!", "Answer briefly.", "answer, briefly", "Talk like a pirate.",
                                   "Talk like a pirate please.", "", "Respond in Spanish briefly for a child now."],
                          "kind": "templated", "source": "t"})
    pool = build_pool(cands, ["Respond in Spanish."], near_duplicate=0.8)
    reason = dict(zip(pool["text"], pool["removed"]))
    assert reason["Respond in Spanish!"] == "hidden instruction"
    assert reason["Answer briefly."] == "" and reason["answer, briefly"] == "duplicate of 1"
    assert reason["Talk like a pirate."] == "" and reason["Talk like a pirate please."] == "near-duplicate of 3"
    assert reason[""] == "empty"
    assert reason["Respond in Spanish briefly for a child now."] == ""  # shares 3 of 9 words: kept
    assert list(pool["candidate"]) == list(range(len(cands)))
    shards = [shard(pool, i, 2) for i in range(2)]
    assert sorted(pd.concat(shards)["candidate"]) == sorted(pool.loc[pool["removed"] == "", "candidate"])


# --- the screening gradient and pursuit ---------------------------------------------------------------

def _random_problem(K=6, N=40, d=10, V=60, seed=0):
    """Random head states whose target is exactly the signed product w1 = 1.2, w4 = -0.5 (a mixture of
    factored distributions is itself one: its state is the weighted sum of the atoms' states)."""
    g = torch.Generator().manual_seed(seed)
    head = OutputHead(torch.randn(V, d, generator=g))
    X = 0.7 * torch.randn(K, N, d, generator=g)
    C = torch.stack([head.lse(x) for x in X])
    w = np.zeros(K)
    w[1], w[4] = 1.2, -0.5
    xt = torch.einsum("k,knd->nd", torch.from_numpy(w), X.double()).float()
    return head, X, C, xt, head.lse(xt), w


def test_screening_gradient_equals_the_solvers_gradient_for_a_new_atom():
    head, X, C, xt, ct, _ = _random_problem()
    current_w = np.array([0.7, 0, 0.3, 0, 0, 0])
    full = FactoredProblem(head, X, C, xt, ct).screen(current_w)
    u = torch.einsum("k,knd->nd", torch.from_numpy(current_w), X.double()).float()
    s = float(current_w.sum())
    lse_q = head.lse(u, s)
    P = head.moments(xt, ct)
    residual = Residual(pd.DataFrame(), P, head.moments(u, lse_q, s), float(P.kl_to(u, lse_q, s).mean()), [])
    for j in (1, 3, 4):
        g, kl_alone = screening_scores(X[j].numpy(), C[j].numpy(), residual)
        assert g == pytest.approx(full[j], rel=1e-5, abs=1e-7)
        assert kl_alone >= 0


def test_pursuit_finds_the_two_true_atoms_first_and_stops_when_nothing_helps():
    head, X, C, xt, ct, w = _random_problem(K=8, N=60)
    train = np.arange(60) < 40
    names = [f"a{i}" for i in range(8)]
    problems = [FactoredProblem(head, X[:, r], C[:, r], xt[r], ct[r], names) for r in (train, ~train)]
    kl_base = [float(p.P.kl_to(X[0, r], C[0, r]).mean()) for p, r in zip(problems, (train, ~train))]
    path = pursue(*problems, *kl_base, PursuitSettings(max_atoms=8, lam=1e-6, min_gain=1e-3, patience=2))
    added = path.groupby("step")["added"].first()
    assert set(added.iloc[:2]) == {"a1", "a4"}
    final = path[path["step"] == 2].set_index("atom")["weight"]
    assert final["a1"] == pytest.approx(1.2, abs=0.02) and final["a4"] == pytest.approx(-0.5, abs=0.02)
    assert path[path["step"] == 2]["explained_kl_test"].iloc[0] > 0.999
    assert path["step"].max() == 4  # two more additions without gain, then patience stops it
    assert path[path["selected"]]["step"].nunique() == 1


def test_bad_discovery_settings_name_the_key():
    with pytest.raises(ConfigError, match="discovery.screen.top"):
        ScreenSettings(top=0)
    with pytest.raises(ConfigError, match="discovery.pursuit.lam"):
        PursuitSettings(lam=-1)


# --- the chain on the tiny model -------------------------------------------------------------------------

MESSAGES = ["What is the capital of France?", "Why is the sky blue?", "How do I boil an egg?", "Hi",
            "What is gravity?", "How do bees make honey?"]
HAND = pd.DataFrame({"atom": ["spanish", "concise", "cats"], "category": ["x"] * 3,
                     "prompt": ["Respond in Spanish.", "Be concise.", "Talk about cats."]})


@pytest.fixture(scope="module")
def chain(sharp_dir, tmp_path_factory):
    """Caches and the leave-one-out fit of a hard-prompt target whose instruction the hand-written
    dictionary is then denied; a pool that holds it among distractors."""
    from softlens.models import load_model
    from softlens.teacher import GenerationSettings, teacher_table

    d = tmp_path_factory.mktemp("discovery")
    lm = load_model(sharp_dir, {"device": "cpu", "dtype": "float32"})
    msgs = pd.DataFrame({"message_id": [f"m{i}" for i in range(6)], "user_message": MESSAGES,
                         "split": ["train"] * 4 + ["test"] * 2})
    table = teacher_table(lm, PromptSlot.for_model(lm), HardPrompt("Respond in Spanish."), msgs, "spanish",
                          GenerationSettings(max_new_tokens=5))
    write_table(table, d / "teacher.parquet")
    spec = {"name": "spanish", "instruction": "Respond in Spanish."}
    atoms = dictionary_atoms(spec, HAND)
    sources = {s: {"kind": "hard", "text": t} for s, t in zip(atoms["source"], atoms["prompt"])}
    sources |= {"unprompted": {"kind": "unprompted"}}
    run_sources(sharp_dir, d / "teacher.parquet", sources, {n: str(d / f"{n}.parquet") for n in sources},
                {"device": "cpu"}, positions=3)
    run_head(sharp_dir, {"device": "cpu"}, d / "head.safetensors")
    run_fit(str(d), d / "head.safetensors", atoms, "spanish", "target", PathSettings(path_length=5),
            d / "fit.parquet")
    pool = build_pool(pd.DataFrame({"text": ["Talk like a pirate.", "Use many emojis.", "Respond in Spanish.",
                                             "Write a haiku.", "Be very formal."], "kind": "templated",
                                    "source": "t"}), [], 0.8)
    write_table(pool, d / "pool.parquet")
    return d, atoms


def test_screen_ranks_the_missing_instruction_first_and_pursuit_recovers_it(sharp_dir, chain):
    d, atoms = chain
    screens = []
    for i in range(2):
        out = d / f"screen-{i}.parquet"
        run_screen(sharp_dir, d / "teacher.parquet", d / "pool.parquet", {"target": d / "fit.parquet"}, str(d),
                   d / "head.safetensors", atoms, i, 2, ScreenSettings(messages=4, top=2), {"device": "cpu"}, 3, 0, out)
        screens.append(out)
    screened = pd.concat([pd.read_parquet(p) for p in screens], ignore_index=True)
    assert sorted(screened["candidate"]) == list(range(5))  # the shards partition the pool
    best = screened.loc[screened["gradient"].abs().idxmax()]
    assert best["text"] == "Respond in Spanish."
    assert screened.set_index("text")["kl_alone"].idxmin() == "Respond in Spanish."

    table = run_pursuit(sharp_dir, d / "teacher.parquet", screens, str(d), d / "head.safetensors", atoms, "spanish",
                        "target",
                        ScreenSettings(messages=4, top=2), PursuitSettings(max_atoms=4), PathSettings(path_length=5),
                        {"device": "cpu"}, 3, d / "pursuit.parquet")
    found = table[(table["dictionary_kind"] == "discovered") & table["selected"]]
    top = found.loc[found["weight"].abs().idxmax()]
    assert top["text"] == "Respond in Spanish." and top["kind"] == "templated"
    assert found["explained_kl_test"].iloc[0] > 0.99
    assert set(table["dictionary_kind"]) == {"generated", "discovered"}
    assert (table.loc[table["dictionary_kind"] == "generated", "dictionary_size"] == 2).all()
    assert (table.loc[table["dictionary_kind"] == "discovered", "n_candidates"] == 5 + 2).all()
