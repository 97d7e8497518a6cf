"""The PoE solver: exact against cvxpy on small problems, sparse recovery, and loud failures."""

import numpy as np
import pytest
import torch

from softlens.poe import (
    FactoredProblem,
    NotConverged,
    PoEProblem,
    lambda_path,
    solve,
    solve_cvxpy,
    solve_path,
)


def problem(
    K=6, N=8, V=50, seed=0, w_true=(1.0, -0.5, 0.0, 0.0, 0.3, 0.0), noise=0.3, dtype=torch.float64
):
    g = torch.Generator().manual_seed(seed)
    L = torch.log_softmax(2 * torch.randn(K, N, V, generator=g, dtype=torch.float64), -1)
    w = torch.tensor(w_true[:K], dtype=torch.float64)
    target = torch.log_softmax(
        torch.einsum("k,knv->nv", w, L)
        + noise * torch.randn(N, V, generator=g, dtype=torch.float64),
        -1,
    )
    return PoEProblem(L.to(dtype), target.to(dtype))


def objective(p, w, lam):
    return p.kl(w) + lam * np.abs(w).sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_path_matches_cvxpy_to_1e6_relative_objective(seed):
    p = problem(seed=seed)
    fits = solve_path(p, lambda_path(p, 20, 1e-3))
    assert len(fits) == 20 and fits[0].nnz == 0  # lambda_max: w = 0
    for f in fits[1::4]:
        w_ref, _ = solve_cvxpy(p, f.lam, "CLARABEL")
        ref = objective(p, w_ref, f.lam)
        assert abs(f.objective - ref) / ref < 1e-6
        assert f.objective <= ref + 1e-9  # never worse than the reference


def test_gradient_and_hessian_are_exact():
    p = problem()
    w = np.array([0.7, -0.2, 0.0, 0.1, 0.3, 0.0])
    atoms = np.arange(p.K)
    _, g, H = p.derivatives(w, atoms, hessian=True)
    eps = 1e-6
    num_g = np.array([(p.kl(w + eps * e) - p.kl(w - eps * e)) / (2 * eps) for e in np.eye(p.K)])
    assert np.allclose(g, num_g, atol=1e-7)
    num_H = np.array(
        [
            (p.derivatives(w + eps * e, atoms)[1] - p.derivatives(w - eps * e, atoms)[1])
            / (2 * eps)
            for e in np.eye(p.K)
        ]
    )
    assert np.allclose(H, num_H, atol=1e-6)
    assert np.allclose(p.screen(w), g, atol=1e-10)


def test_exact_target_is_recovered_with_its_signed_weights():
    p = problem(noise=0.0)
    fit = solve_path(p, lambda_path(p, 20, 1e-5))[-1]
    assert np.allclose(fit.weights, [1.0, -0.5, 0.0, 0.0, 0.3, 0.0], atol=2e-3)


def test_float32_storage_fits_within_1e6_of_float64():
    p64, p32 = problem(), problem(dtype=torch.float32)
    lams = lambda_path(p64, 20, 1e-3)
    w64, w32 = solve_path(p64, lams)[-1].weights, solve_path(p32, lams)[-1].weights
    assert np.abs(w64 - w32).max() < 1e-4


def test_negative_lambda_is_rejected():
    p = problem()
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        solve(p, -0.1)
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        solve_path(p, [0.1, -0.1])


def test_non_convergence_is_reported_not_returned():
    p = problem()
    with pytest.raises(
        NotConverged, match=r"did not converge at lambda=.*status max_iter, 1 iterations"
    ):
        solve_path(p, lambda_path(p, 20, 1e-3), max_iter=1)
    fit = solve(p, lambda_path(p, 20, 1e-3)[-1], max_iter=1)
    assert not fit.converged and fit.status == "max_iter"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_log_probs_are_rejected(bad):
    p = problem()
    L = p.L.clone()
    L[1, 2, 3] = bad
    with pytest.raises(ValueError, match="atom log-probs contain NaN or inf"):
        PoEProblem(L, p.target)
    t = p.target.clone()
    t[0, 0] = bad
    with pytest.raises(ValueError, match="target log-probs contain NaN or inf"):
        PoEProblem(p.L, t)


# --- factored caches: the same fits from head states
# --------------------------------------------------


def factored(
    K=6, N=30, d=12, V=400, seed=0, bias=True, w_true=(1.0, -0.5, 0.0, 0.0, 0.3, 0.0), noise=0.4
):
    """A random output head, atom states, and a target near a signed product of the atoms; with
    the dense float64 log-probs of the same distributions as the reference."""
    from softlens.head import OutputHead

    g = torch.Generator().manual_seed(seed)
    head = OutputHead(torch.randn(V, d, generator=g), torch.randn(V, generator=g) if bias else None)
    X = torch.randn(K, N, d, generator=g)
    C = torch.stack([head.lse(x) for x in X])
    xt = torch.einsum("k,knd->nd", torch.tensor(w_true[:K]), X) + noise * torch.randn(
        N, d, generator=g
    )
    ct = head.lse(xt)
    dense = PoEProblem(
        torch.stack([head.log_probs(x, c) for x, c in zip(X, C)]), head.log_probs(xt, ct)
    )
    return FactoredProblem(head, X, C, xt, ct, head_tokens=16, rest_draws=16), dense


def test_factored_objective_and_gradient_equal_the_dense_ones():
    fp, dense = factored()
    w = np.array([0.7, -0.2, 0.0, 0.1, 0.3, 0.0])
    assert fp.kl(w) == pytest.approx(dense.kl(w), rel=1e-6)
    assert np.abs(fp.screen(w) - dense.screen(w)).max() < 1e-5 * dense.lambda_max()


def test_the_tangent_model_is_exact_at_its_point_in_value_and_gradient():
    fp, _ = factored()
    w = np.array([0.7, -0.2, 0.0, 0.1, 0.3, 0.0])
    kl, g, tangent = fp._pass(w, 16)
    assert tangent.kl(w) == pytest.approx(kl, rel=1e-6)  # float32 logits on both sides
    assert np.abs(tangent.screen(w) - g).max() < 1e-6 * fp.lambda_max()
    assert tangent.kl(w + 0.3) <= fp.kl(w + 0.3) + 1.0  # a model, not the objective, away from w


def test_the_tangent_models_hessian_is_its_gradients_derivative():
    fp, _ = factored()
    w = np.array([0.7, -0.2, 0.0, 0.1, 0.3, 0.0])
    tangent = fp._pass(w, 16)[2]
    atoms, eps = np.arange(fp.K), 1e-6
    H = tangent.derivatives(w, atoms, hessian=True)[2]
    num_H = np.array(
        [
            (
                tangent.derivatives(w + eps * e, atoms)[1]
                - tangent.derivatives(w - eps * e, atoms)[1]
            )
            / (2 * eps)
            for e in np.eye(fp.K)
        ]
    )
    assert np.allclose(H, num_H, atol=1e-6)


def test_factored_passes_do_not_depend_on_how_contexts_are_chunked(monkeypatch):
    import softlens.poe as poe

    fp, dense = factored(N=30)
    w = np.array([0.7, -0.2, 0.0, 0.1, 0.3, 0.0])
    # 4 * V bytes a context: 7 contexts a chunk at most, so 30 contexts in 5 chunks of 6
    monkeypatch.setattr(poe, "PASS_CHUNK_BYTES", 7 * 4 * fp.head.V)
    chunked, _ = factored(N=30)
    assert len(chunked._chunks) == 5 and {c.stop - c.start for c in chunked._chunks} == {6}
    assert chunked.kl(w) == pytest.approx(dense.kl(w), rel=1e-6)
    assert np.abs(chunked.screen(w) - dense.screen(w)).max() < 1e-5 * dense.lambda_max()
    # float32 products agree to a few ulps, not bit for bit: a BLAS may block 6 rows and 30
    # differently (9.5e-7 on an AVX2 CPU, < 1e-9 on an AVX-512 one); a misplaced row is off by ~0.1
    assert np.abs(chunked.kl_rows(w) - fp.kl_rows(w)).max() < 1e-5


@pytest.mark.parametrize("seed", range(5))
def test_the_quadratic_step_returns_the_lasso_minimiser(seed):
    """_cd_quadratic (coordinate descent, with exact solves on its current signs) meets the
    optimality conditions of g.(x - w) + 1/2 (x - w)' H (x - w) + lam ||x||_1 to 1e-10."""
    from softlens.poe import _cd_quadratic, _signed_stationary_point

    rng = np.random.default_rng(seed)
    A = rng.normal(size=(12, 12))
    H, g, w, lam = A @ A.T + 0.1 * np.eye(12), rng.normal(size=12), rng.normal(size=12), 0.8
    x = _cd_quadratic(g, H, w, lam)
    grad = g + H @ (x - w)
    on = x != 0
    assert 0 < on.sum() < 12  # a sparse answer: both kinds of condition are checked
    assert np.abs(grad[on] + lam * np.sign(x[on])).max() < 1e-10
    assert np.abs(grad[~on]).max() <= lam + 1e-10
    flipped = x.copy()
    flipped[np.flatnonzero(on)[0]] *= -1  # the wrong signs: not a minimiser, so no answer
    assert _signed_stationary_point(g, H, w, lam, flipped) is None


def test_the_restricted_problem_coarse_grains_each_atom_exactly_and_is_whole_without_a_bucket():
    fp, dense = factored()
    whole = fp.restricted(tokens=400)  # the whole vocabulary: the same problem
    w = np.array([0.7, -0.2, 0.0, 0.1, 0.3, 0.0])
    assert whole.V == 400 and whole.kl(w) == pytest.approx(dense.kl(w), rel=1e-6)
    small = fp.restricted(tokens=20)
    assert small.V == 21  # 20 tokens per context and the rest's bucket
    for i in range(fp.K):  # one atom alone: coarse-graining can only lose KL (data processing)
        e = np.eye(fp.K)[i]
        assert small.kl(e) <= dense.kl(e) + 1e-9
        rest = small.L[i, :, -1].exp() + small.L[i, :, :-1].exp().sum(-1)
        assert torch.allclose(
            rest, torch.ones_like(rest), atol=1e-9
        )  # the bucket holds the rest exactly
    # its fits approach the exact ones as the token sets cover more of the mass (flat random
    # distributions
    # here; a language model's top 512 of 49k tokens hold most of it)
    lams = lambda_path(dense, 5, 1e-2)
    best = solve_path(dense, lams)[-1]
    gaps = []
    for tokens in (50, 100, 200):
        w = solve_path(fp.restricted(tokens=tokens), lams)[-1].weights
        gaps.append(dense.kl(w) + lams[-1] * np.abs(w).sum() - best.objective)
    assert 0 <= gaps[2] < gaps[1] < gaps[0] and gaps[2] < 0.01 * best.objective


@pytest.mark.parametrize("bias", [True, False])
def test_factored_path_matches_the_dense_path(bias):
    fp, dense = factored(bias=bias)
    lams = lambda_path(dense, 20, 1e-3)
    f_fits, d_fits = solve_path(fp, lams), solve_path(dense, lams)
    for f, d in zip(f_fits, d_fits):
        assert f.converged and f.rounds <= 8
        assert np.abs(f.weights - d.weights).max() < 2e-3
        assert (
            abs(dense.kl(f.weights) + f.lam * np.abs(f.weights).sum() - d.objective)
            <= 1e-6 * d.objective
        )


@pytest.mark.parametrize("seed", range(4))
def test_factored_fits_do_not_depend_on_the_log_normalisers_size(seed):
    """A constant added to every logit changes no distribution, only the size of the terms whose
    small difference the objective is (float32 logits): SmolLM2's log-normalisers are ~23. The
    line search must judge the objective to that resolution, not to its own size (it stalled)."""
    from softlens.head import OutputHead

    fp, dense = factored(seed=seed)
    shift = 30.0
    shifted = FactoredProblem(
        OutputHead(fp.head.weight, fp.head.bias + shift),
        fp.X,
        fp.C + shift,
        fp.target_x,
        fp.target_lse + shift,
        head_tokens=16,
        rest_draws=16,
    )
    lams = lambda_path(dense, 20, 1e-3)
    for f, d in zip(solve_path(shifted, lams), solve_path(dense, lams)):
        assert f.converged
        assert np.abs(f.weights - d.weights).max() < 2e-3
        assert (
            abs(dense.kl(f.weights) + f.lam * np.abs(f.weights).sum() - d.objective)
            <= 1e-6 * d.objective
        )


def test_a_fit_warm_started_at_its_optimum_reports_converged():
    p = problem()
    lam = 0.3 * p.lambda_max()
    w = solve(p, lam).weights
    again = solve(p, lam, w)
    assert again.converged and again.status == "converged" and np.allclose(again.weights, w)
    fp, _ = factored()
    w = solve(fp, lam * 0 + 0.3 * fp.lambda_max()).weights
    assert solve(fp, 0.3 * fp.lambda_max(), w).rounds == 0


def test_fit_kkt_covers_the_atoms_at_zero():
    p = problem()
    lam = 0.5 * p.lambda_max()
    fit = solve(p, lam)
    assert fit.kkt <= 1e-9 and (fit.weights == 0).any()
    wrong = np.zeros(p.K)  # zero everywhere is not optimal below lambda_max: the report must say so
    assert np.maximum(np.abs(p.screen(wrong)) - lam, 0).max() > 0


def test_a_loose_tolerance_converges_instead_of_cycling_atoms_through_the_working_set():
    """Atoms at zero that meet their conditions to the tolerance (not to the data's resolution)
    are left alone: cross-validation folds solve at 1e-4 of lambda_max."""
    w = np.zeros(20)
    w[[0, 1, 4]] = 1.0, -0.5, 0.3
    dense = problem(K=20, N=40, V=300, seed=0, w_true=tuple(w), noise=0.5)
    lams = lambda_path(dense, 20, 1e-3)
    for tol in (1e-4 * lams[0], 1e-2 * lams[0]):  # the old screen cycled at 1e-2 here ("max_iter")
        assert all(f.converged for f in solve_path(dense, lams, tol=tol))
