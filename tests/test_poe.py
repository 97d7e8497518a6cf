"""The PoE solver: exact against cvxpy on small problems, sparse recovery, and loud failures."""

import numpy as np
import pytest
import torch

from softlens.poe import NotConverged, PoEProblem, lambda_path, solve, solve_cvxpy, solve_path


def problem(K=6, N=8, V=50, seed=0, w_true=(1.0, -0.5, 0.0, 0.0, 0.3, 0.0), noise=0.3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    L = torch.log_softmax(2 * torch.randn(K, N, V, generator=g, dtype=torch.float64), -1)
    w = torch.tensor(w_true[:K], dtype=torch.float64)
    target = torch.log_softmax(torch.einsum("k,knv->nv", w, L) + noise * torch.randn(N, V, generator=g, dtype=torch.float64), -1)
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
    num_H = np.array([(p.derivatives(w + eps * e, atoms)[1] - p.derivatives(w - eps * e, atoms)[1]) / (2 * eps)
                      for e in np.eye(p.K)])
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
    with pytest.raises(NotConverged, match=r"did not converge at lambda=.*status max_iter, 1 iterations"):
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
