"""Dictionary discovery: pools (templates, deduplication), exclusion levels, the screening
gradient, pursuit, and the whole screen -> pursuit chain on the tiny model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from softlens.config import ConfigError
from softlens.decompose import Caches, PathSettings, dictionary_atoms, run_fit
from softlens.discovery import (
    PursuitSettings,
    Residual,
    ScreenSettings,
    combination_rows,
    combinations,
    pursue,
    run_pursuit,
    run_screen,
    screening_scores,
)
from softlens.exclusion import ExclusionSettings, atom_levels, exclusions, kept_at
from softlens.head import OutputHead
from softlens.io import write_table
from softlens.job import ModelJob
from softlens.logprobs import run_head, run_sources
from softlens.poe import FactoredProblem
from softlens.pool import build_pool, jaccard, proposal_requests, shard, templated
from tiny import write_teacher

PARTS = {
    "verbs": ["Respond", "Answer"],
    "languages": ["in Spanish", "in French"],
    "styles": ["briefly"],
    "audiences": ["for a child"],
    "formats": ["as a list"],
}


# --- pools
# -------------------------------------------------------------------------------------------


def test_templated_pool_is_distinct_seeded_and_every_item_has_a_verb():
    a = templated(PARTS, 20, seed=0)
    assert len(a) == len(set(a)) == 20
    assert a == templated(PARTS, 20, seed=0) and a != templated(PARTS, 20, seed=1)
    assert all(t.split()[0] in PARTS["verbs"] and t.endswith(".") for t in a)
    assert len(templated(PARTS, 10_000, seed=0)) == 2 * (
        3 * 2 * 2 * 2 - 1
    )  # the whole product, bare verbs out


def test_templated_pool_without_verbs_names_the_key():
    with pytest.raises(ConfigError, match="templates.verbs"):
        templated({"verbs": [], "languages": ["in Spanish"]}, 5, 0)


def test_proposal_request_needs_its_category_field():
    assert proposal_requests(["tone"], 2, "About {category}.") == [
        ("tone", "About tone."),
        ("tone", "About tone."),
    ]
    with pytest.raises(ConfigError, match="request"):
        proposal_requests(["tone"], 1, "no field")


def test_jaccard_is_the_word_set_overlap():
    s = jaccard(["Respond in Spanish.", "cats"], ["respond, IN spanish please"])
    assert s[0, 0] == pytest.approx(3 / 4) and s[1, 0] == 0


def test_pool_removes_duplicates_and_near_duplicates_with_reasons():
    cands = pd.DataFrame(
        {
            "text": [
                "Respond in Spanish!",
                "Answer briefly.",
                "answer, briefly",
                "Talk like a pirate.",
                "Talk like a pirate please.",
                "",
                "Respond in Spanish briefly for a child now.",
            ],
            "kind": "templated",
            "source": "t",
        }
    )
    pool = build_pool(cands, near_duplicate=0.8)
    reason = dict(zip(pool["text"], pool["removed"]))
    assert (
        reason["Respond in Spanish!"] == ""
    )  # the hidden instruction is an exclusion level's business
    assert reason["Answer briefly."] == "" and reason["answer, briefly"] == "duplicate of 1"
    assert (
        reason["Talk like a pirate."] == ""
        and reason["Talk like a pirate please."] == "near-duplicate of 3"
    )
    assert reason[""] == "empty"
    assert list(pool["candidate"]) == list(range(len(cands)))
    shards = [shard(pool, i, 2) for i in range(2)]
    assert sorted(pd.concat(shards)["candidate"]) == sorted(
        pool.loc[pool["removed"] == "", "candidate"]
    )


class _Embed:
    """Sentence embeddings by table: unit vectors whose cosine to the first is set per text."""

    def __init__(self, cosines: dict[str, float]):
        self.cosines = cosines

    def __call__(self, texts):
        c = np.array([self.cosines.get(t, 0.0) for t in texts])
        return np.stack([c, np.sqrt(1 - c**2)], 1)


def test_exclusion_levels_are_cumulative_and_say_why():
    texts = [
        "Respond in Spanish!",
        "Respond in Spanish briefly for a child now.",
        "Spanish",
        "Reply in Spanish.",
        "Please answer en español.",
        "Answer in the language of Madrid.",
        "Talk like a pirate.",
        "Respond in French.",
    ]
    embed = _Embed(
        {
            "Respond in Spanish.": 1.0,
            "Answer in the language of Madrid.": 0.8,
            "Reply in Spanish.": 0.9,
            "Respond in French.": 0.65,
        }
    )
    ex = exclusions(
        texts, "Respond in Spanish.", ["spanish", "español"], ExclusionSettings(), embed
    )
    level = dict(zip(texts, ex["excluded_at"]))
    reason = dict(zip(texts, ex["exclusion_reason"]))
    assert (
        level["Respond in Spanish!"]
        == level["Respond in Spanish briefly for a child now."]
        == "lexical"
    )
    assert reason["Respond in Spanish briefly for a child now."] == "contains the instruction"
    assert level["Spanish"] == "lexical" and reason["Spanish"] == "contained in the instruction"
    assert level["Reply in Spanish."] == "semantic"  # word Jaccard 0.5 < 0.6, cosine 0.9
    assert (
        level["Answer in the language of Madrid."] == "semantic"
        and reason["Answer in the language of Madrid."] == "cosine 0.80"
    )
    assert (
        level["Please answer en español."] == "reveal"
        and "español" in reason["Please answer en español."]
    )
    assert level["Talk like a pirate."] == level["Respond in French."] == ""  # cosine 0.65 < 0.7
    assert kept_at(ex["excluded_at"], "none").all()
    assert kept_at(ex["excluded_at"], "lexical").sum() == 5
    assert kept_at(ex["excluded_at"], "semantic").sum() == 3
    assert list(np.array(texts)[kept_at(ex["excluded_at"], "reveal")]) == [
        "Talk like a pirate.",
        "Respond in French.",
    ]
    assert (
        exclusions(texts, None, [], ExclusionSettings())["excluded_at"] == ""
    ).all()  # no instruction, nothing
    with pytest.raises(ValueError, match="embedder"):
        exclusions(texts, "Respond in Spanish.", [], ExclusionSettings())
    with pytest.raises(ConfigError, match="exclusion.levels"):
        ExclusionSettings(levels=("none", "lexicon"))
    # without computed exclusions a dictionary still never hands over its own instruction
    atoms = pd.DataFrame({"atom": ["a", "b"], "is_target": [True, False]})
    assert list(atom_levels(atoms)) == ["lexical", ""]


# --- the screening gradient and pursuit
# ---------------------------------------------------------------


def _random_problem(K=6, N=40, d=10, V=60, seed=0):
    """Random head states whose target is exactly the signed product w1 = 1.2, w4 = -0.5 (a
    mixture of factored distributions is itself one: its state is the weighted sum of the atoms'
    states)."""
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
    residual = Residual(
        pd.DataFrame(), P, head.moments(u, lse_q, s), float(P.kl_to(u, lse_q, s).mean()), []
    )
    for j in (1, 3, 4):
        g, kl_alone = screening_scores(X[j].numpy(), C[j].numpy(), residual)
        assert g == pytest.approx(full[j], rel=1e-5, abs=1e-7)
        assert kl_alone >= 0


def test_pursuit_finds_the_two_true_atoms_first_and_stops_when_nothing_helps():
    head, X, C, xt, ct, w = _random_problem(K=8, N=60)
    keys = pd.DataFrame(
        {"message_id": np.arange(60) // 3, "split": np.where(np.arange(60) < 42, "train", "test")}
    )
    names = [f"a{i}" for i in range(8)]

    def problem(rows):
        return FactoredProblem(head, X[:, rows], C[:, rows], xt[rows], ct[rows], names)

    def base_kl(p, rows):
        return p.P.kl_to(X[0, rows], C[0, rows]).numpy()

    path = pursue(
        problem,
        keys,
        base_kl,
        PursuitSettings(max_atoms=8, lam=1e-6, min_gain=1e-3, patience=2),
        PathSettings(),
    )
    added = path.groupby("step")["added"].first()
    assert set(added.iloc[:2]) == {"a1", "a4"}
    final = path[path["step"] == 2].set_index("atom")["weight"]
    assert final["a1"] == pytest.approx(1.2, abs=0.02) and final["a4"] == pytest.approx(
        -0.5, abs=0.02
    )
    at2 = path[path["step"] == 2].iloc[0]
    assert at2["explained_kl_test"] > 0.999 and at2["explained_kl_cv"] > 0.999
    assert at2["ci_low"] <= at2["explained_kl_test"] <= at2["ci_high"]
    assert (
        path["step"].max() == 4
    )  # two more additions without cross-validated gain, then patience stops it
    assert path[path["selected"]]["step"].nunique() == 1


def test_bad_discovery_settings_name_the_key():
    with pytest.raises(ConfigError, match="discovery.screen.top"):
        PursuitSettings(top=0)
    with pytest.raises(ConfigError, match="discovery.screen.messages"):
        ScreenSettings(messages=0)
    with pytest.raises(ConfigError, match="discovery.pursuit.lam"):
        PursuitSettings(lam=-1)


# --- the chain on the tiny model
# -------------------------------------------------------------------------

MESSAGES = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "Hi",
    "What is gravity?",
    "How do bees make honey?",
]
HAND = pd.DataFrame(
    {
        "atom": ["spanish", "concise", "cats"],
        "category": ["x"] * 3,
        "prompt": ["Respond in Spanish.", "Be concise.", "Talk about cats."],
    }
)


@pytest.fixture(scope="module")
def chain(sharp_dir, tmp_path_factory):
    """Caches and the leave-one-out fit of a hard-prompt target whose instruction the
    hand-written dictionary is then denied; a pool that holds it among distractors."""
    from softlens.models import load_model

    d = tmp_path_factory.mktemp("discovery")
    lm = load_model(sharp_dir, {"device": "cpu", "dtype": "float32"})
    write_teacher(lm, MESSAGES, 4, d / "teacher.parquet", tokens=5)
    spec = {"name": "spanish", "instruction": "Respond in Spanish."}
    atoms = dictionary_atoms(spec, HAND)
    sources = {s: {"kind": "hard", "text": t} for s, t in zip(atoms["source"], atoms["prompt"])}
    sources |= {"unprompted": {"kind": "unprompted"}}
    job = ModelJob(
        model=sharp_dir, settings={"device": "cpu"}, behavior=spec, teacher=d / "teacher.parquet"
    )
    run_sources(
        job=job, sources=sources, outputs={n: str(d / f"{n}.parquet") for n in sources}, positions=3
    )
    run_head(model=sharp_dir, settings={"device": "cpu"}, out=d / "head.safetensors")
    caches = Caches(
        head=str(d / "head.safetensors"),
        files=tuple(str(d / f"{n}.parquet") for n in sources),
        atoms=atoms,
    )
    (d / "fits").mkdir()
    run_fit(
        caches=caches,
        behavior="spanish",
        settings=PathSettings(path_length=5),
        out=d / "fits" / "target.parquet",
    )
    pool = build_pool(
        pd.DataFrame(
            {
                "text": [
                    "Talk like a pirate.",
                    "Use many emojis.",
                    "Respond in Spanish.",
                    "Write a haiku.",
                    "Be very formal.",
                ],
                "kind": "templated",
                "source": "t",
            }
        ),
        0.8,
    )
    levels = ExclusionSettings(levels=("none", "lexical"))
    pool = pd.concat(
        [pool, exclusions(list(pool["text"]), spec["instruction"], [], levels)], axis=1
    )
    write_table(pool, d / "pool.parquet")
    return d, job, caches


@pytest.fixture(scope="module")
def screens(chain) -> list:
    """The chain's pool screened in two shards against the leave-one-out fit."""
    d, job, caches = chain
    outs = [d / f"screen-{i}.parquet" for i in range(2)]
    for i, out in enumerate(outs):
        run_screen(
            job=job,
            caches=caches,
            pool=d / "pool.parquet",
            fits=[d / "fits" / "target.parquet"],
            settings=ScreenSettings(messages=4, shards=2, shard=i, positions=3),
            out=out,
        )
    return outs


def test_screen_ranks_the_missing_instruction_first_and_pursuit_recovers_it(chain, screens):
    d, job, caches = chain
    screened = pd.concat([pd.read_parquet(p) for p in screens], ignore_index=True)
    assert sorted(screened["candidate"]) == list(range(5))  # the shards partition the pool
    best = screened.loc[screened["gradient"].abs().idxmax()]
    assert best["text"] == "Respond in Spanish."
    assert screened.set_index("text")["kl_alone"].idxmin() == "Respond in Spanish."

    table = run_pursuit(
        job=job,
        caches=caches,
        screens=screens,
        settings=PursuitSettings(max_atoms=4, top=2, positions=3, levels=("none", "lexical")),
        path_settings=PathSettings(path_length=5),
        out=d / "pursuit.parquet",
    )
    assert set(table["dictionary_kind"]) == {"generated", "discovered", "combination"}
    assert set(table["exclusion"]) == {"none", "lexical"}
    assert (table.loc[table["dictionary_kind"] == "generated", "dictionary_size"] == 2).all()
    none, lexical = (table[table["exclusion"] == x] for x in ("none", "lexical"))
    found = none[(none["dictionary_kind"] == "discovered") & none["selected"]]
    assert (
        found.loc[found["weight"].abs().idxmax(), "text"] == "Respond in Spanish."
    )  # in reach: found
    assert found["explained_kl_test"].iloc[0] > 0.99
    assert "Respond in Spanish." not in set(
        lexical["text"]
    )  # out of reach: the instruction and its own atom
    assert (none.loc[none["dictionary_kind"] == "discovered", "n_candidates"] == 5 + 3).all()
    assert (lexical.loc[lexical["dictionary_kind"] == "discovered", "n_candidates"] == 4 + 2).all()
    # the combination reader's one-atom instruction is that atom (its cached states): it closes as
    # the atom does
    single = none[(none["dictionary_kind"] == "combination") & (none["step"] == 1)].iloc[0]
    cached = found.loc[found["weight"].idxmax()]
    assert single["text"] == cached["text"]
    assert single["plugin_closure_test"] == pytest.approx(cached["plugin_closure_test"], abs=1e-4)
    assert none.loc[none["dictionary_kind"] == "combination", "selected"].sum() == 1


def test_levels_that_keep_the_same_atoms_share_their_fits(chain, screens, monkeypatch):
    import softlens.discovery as discovery

    d, job, caches = chain
    calls = {"generated": [], "discovered": []}
    for kind, key in (("generated", "pool_idx"), ("discovered", "use")):
        fit = getattr(discovery, f"_{kind}_fit")
        monkeypatch.setattr(
            discovery,
            f"_{kind}_fit",
            lambda fit=fit, kind=kind, key=key, **kw: calls[kind].append(kw[key]) or fit(**kw),
        )
    # the pool's exclusions stop at "lexical", so "semantic" keeps what "lexical" keeps
    table = run_pursuit(
        job=job,
        caches=caches,
        screens=screens,
        settings=PursuitSettings(
            max_atoms=3, top=2, positions=3, levels=("none", "lexical", "semantic")
        ),
        path_settings=PathSettings(path_length=4),
        out=d / "same.parquet",
    )
    # "none" keeps the instruction (a candidate and a hand-written atom); the others do not
    generated, discovered = calls["generated"], calls["discovered"]
    assert len(generated) == len(discovered) == 2 and len(discovered[0]) > len(discovered[1])
    fitted = table[table["dictionary_kind"].isin(["generated", "discovered"])]
    lexical, semantic = (
        fitted[fitted["exclusion"] == x].drop(columns="exclusion").reset_index(drop=True)
        for x in ("lexical", "semantic")
    )
    pd.testing.assert_frame_equal(lexical, semantic)
    assert (
        not fitted[fitted["exclusion"] == "none"]
        .drop(columns="exclusion")
        .reset_index(drop=True)
        .equals(lexical)
    )


def test_combination_reader_joins_positive_atoms_by_weight_and_chooses_k_on_train():
    discovered = pd.DataFrame(
        {
            "dictionary_kind": "discovered",
            "exclusion": "none",
            "selected": [True, True, True, True, False],
            "weight": [0.2, 0.9, -0.5, 0.4, 3.0],
            "text": [
                "Use a list.",
                "Respond in Spanish.",
                "Be formal.",
                "Be brief.",
                "Never selected.",
            ],
        }
    )
    assert combinations(discovered) == [
        "Respond in Spanish.",
        "Respond in Spanish. Be brief.",
        "Respond in Spanish. Be brief. Use a list.",
    ]
    # train prefers two atoms, test prefers one: the choice follows train, and test is only reported
    train = {
        "Respond in Spanish.": 0.5,
        "Respond in Spanish. Be brief.": 0.7,
        "Respond in Spanish. Be brief. Use a list.": 0.6,
    }

    def closures(states, texts, split):
        assert len(states[0]) == len(texts)
        values = train if split == "train" else {t: 1.0 - 0.1 * len(t.split(".")) for t in texts}
        return pd.DataFrame(
            {
                "atom": texts,
                f"plugin_closure_{split}": [values[t] for t in texts],
                "plugin_ci_low": 0.0,
                "plugin_ci_high": 1.0,
            }
        )

    rows = combination_rows(
        discovered,
        lambda texts: (np.zeros((len(texts), 2, 3)), np.zeros((len(texts), 2))),
        closures,
    )
    assert list(rows["step"]) == [1, 2, 3] and (rows["dictionary_kind"] == "combination").all()
    assert rows.loc[rows["selected"], "text"].tolist() == ["Respond in Spanish. Be brief."]
    assert rows["plugin_closure_test"].idxmax() != rows.index[rows["selected"]][0]
