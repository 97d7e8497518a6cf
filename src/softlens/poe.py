"""Sparse signed product-of-experts (PoE) fits.

For contexts n and dictionary atoms i with next-token log-probs L[i, n, :], the mixture is

    log q_w(. | n) = log_softmax( sum_i w_i L[n, i, :] )

and the fit solves   min_w  mean_n KL(P_n || q_w(. | n)) + lam * ||w||_1,   w in R^K   (convex).

With z_n = L_n^T w:  KL = sum_v P log P - P.z + logsumexp(z), so the gradient is mean_n(E_q[L_n] - E_P[L_n])
and the Hessian is mean_n Cov_q(L_n) (K x K). The solver is proximal Newton on a working set: the exact
Hessian there, a coordinate-descent inner solve, backtracking on the true objective. One screening
pass over all atoms per outer round finds the atoms that violate the optimality conditions. Sums over
contexts and the mixture logits accumulate in float64.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)


class NotConverged(RuntimeError):
    """The solver stopped before meeting its tolerance; the message carries the status."""


@dataclass
class Fit:
    lam: float
    weights: np.ndarray          # (K,)
    objective: float             # mean KL + lam * ||w||_1 on the fitting contexts
    kl: float                    # mean KL(P || q_w) on the fitting contexts
    iterations: int
    kkt: float                   # max KKT violation at the returned weights
    converged: bool
    status: str = ""

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.weights))


@dataclass
class PoEProblem:
    """Atom log-probs L (K, N, V), atom-major, and target log-probs (N, V) on the same contexts.

    Atom-major layout makes the all-atom gradient one matrix-vector product over (K, N*V), several
    times faster than per-context batched products.
    """

    L: torch.Tensor
    target: torch.Tensor
    atoms: list[str] = field(default_factory=list)
    chunk_bytes: int = 128 * 2**20

    def __post_init__(self):
        if self.L.ndim != 3 or self.target.shape != self.L.shape[1:]:
            raise ValueError(f"L must be (K, N, V) and target (N, V); got {tuple(self.L.shape)} and {tuple(self.target.shape)}")
        for name, t in (("atom log-probs", self.L), ("target log-probs", self.target)):
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contain NaN or inf")
        self.L = self.L.contiguous()
        self.K, self.N, self.V = self.L.shape
        self.atoms = list(self.atoms) or [f"atom{i}" for i in range(self.K)]
        if len(self.atoms) != self.K:
            raise ValueError(f"{len(self.atoms)} atom names for {self.K} atoms")
        step = max(1, int(self.chunk_bytes // (self.K * self.V * 8)))
        self._chunks = [slice(a, min(a + step, self.N)) for a in range(0, self.N, step)]
        # Fixed parts of the objective, in float64: mean_n E_P[L] (K,) and mean_n sum_v P log P.
        ep, plogp = torch.zeros(self.K, dtype=torch.float64), 0.0
        for c in self._chunks:
            p = self.target[c].double().exp()
            ep += (self.L[:, c].double() * p).sum((1, 2))
            plogp += float((p * self.target[c].double()).sum())
        self.ep_mean = ep / self.N
        self.const = plogp / self.N

    # -- passes over L ---------------------------------------------------------------------------
    # Exact work happens on the small working set S: its log-probs are gathered chunk by chunk into
    # reusable float64 buffers (fresh large temporaries cost more in page faults than in arithmetic).
    # The all-atom screening pass runs in L's dtype on the residual q - P, which is small near a
    # good fit, so its rounding error stays far below any lambda of interest.

    @property
    def screen_tol(self) -> float:
        """Resolution of gradients computed from the data, relative to the gradient scale at w = 0
        (lambda_max): ~exact for float64 data, 1e-5 for float32 data.

        Float32 per-context sums over 49k tokens carry ~1e-6 relative rounding. KKT conditions
        resolved to 1e-5 * lambda_max leave the objective within ~1e-8 (relative) of its optimum.
        """
        rel = 1e-12 if self.L.dtype == torch.float64 else 1e-5
        return rel * self.lambda_max()

    def _buffer(self, name: str, numel: int, dtype) -> torch.Tensor:
        buf = self.__dict__.setdefault("_buffers", {}).get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(numel, dtype=dtype)
            self._buffers[name] = buf
        return buf[:numel]

    def _gather(self, c: slice, idx: np.ndarray, dtype=torch.float64, name: str = "gather") -> torch.Tensor:
        """(|idx|, rows, V) copy of the chosen atoms' log-probs on chunk c, in a reused buffer."""
        rows = c.stop - c.start
        out = self._buffer(name, len(idx) * rows * self.V, dtype).view(len(idx), rows, self.V)
        for j, i in enumerate(idx):
            out[j].copy_(self.L[i, c])
        return out

    def _z(self, c: slice, w: np.ndarray) -> torch.Tensor:
        """Mixture logits z = sum_i w_i L_i on chunk c, accumulated in float64 (the objective needs them
        exact; the line search compares objectives that differ by 1e-9)."""
        z = torch.zeros(c.stop - c.start, self.V, dtype=torch.float64)
        for i in np.flatnonzero(w):
            z.add_(self.L[i, c], alpha=float(w[i]))
        return z

    def kl(self, w: np.ndarray) -> float:
        """mean_n KL(P_n || q_w(. | n))."""
        lse = sum(float(torch.logsumexp(self._z(c, w), -1).sum()) for c in self._chunks)
        return self.const - float(self.ep_mean.numpy() @ w) + lse / self.N

    def derivatives(self, w: np.ndarray, atoms: np.ndarray, hessian: bool = False):
        """(kl, gradient on `atoms`, Hessian on `atoms` or None), float64 results.

        The gradient is sum_v (q - P) L per context (in L's dtype; its rounding shrinks as the fit
        improves), contexts added up in float64: exact for float64 data, to `screen_tol` for float32.
        """
        atoms = np.asarray(atoms, dtype=np.int64)
        g = torch.zeros(len(atoms), dtype=torch.float64)
        H = torch.zeros(len(atoms), len(atoms), dtype=torch.float64) if hessian else None
        lse_sum = 0.0
        for c in self._chunks:
            z = self._z(c, w)
            lse = torch.logsumexp(z, -1, keepdim=True)
            lse_sum += float(lse.sum())
            if len(atoms) == 0:
                continue
            q64 = (z - lse).exp_()
            r = (q64 - self.target[c].double().exp()).to(self.L.dtype)   # q - P: small near a good fit
            La = self._gather(c, atoms, self.L.dtype)                     # (|S|, rows, V)
            g += torch.bmm(La.transpose(0, 1), r.unsqueeze(-1)).squeeze(-1).double().sum(0)
            if H is not None:                                             # sum_n Cov_q(L_n)
                q = q64.to(self.L.dtype)
                m = torch.bmm(La.transpose(0, 1), q.unsqueeze(-1)).squeeze(-1).double()  # E_q[L] (rows, |S|)
                A = La.mul_(q.sqrt_()).view(len(atoms), -1)
                H += (A @ A.T).double() - m.T @ m
        g = g / self.N
        kl = self.const - float(self.ep_mean.numpy() @ w) + lse_sum / self.N
        return kl, g.numpy(), None if H is None else (H / self.N).numpy()

    def screen(self, w: np.ndarray) -> np.ndarray:
        """Gradient over all K atoms, mean_n sum_v (q - P) L: one matrix-vector pass in L's dtype."""
        g = torch.zeros(self.K, dtype=torch.float64)
        for c in self._chunks:  # a few contexts per product keeps float32 sums short
            z = self._z(c, w)
            r = ((z - torch.logsumexp(z, -1, keepdim=True)).exp_() - self.target[c].double().exp()).to(self.L.dtype)
            g += torch.mv(self.L[:, c].reshape(self.K, -1), r.view(-1)).double()
        return g.numpy() / self.N

    def lambda_max(self) -> float:
        """The smallest lam at which w = 0 is optimal."""
        if "_lambda_max" not in self.__dict__:
            self._lambda_max = float(np.abs(self.screen(np.zeros(self.K))).max())
        return self._lambda_max


# --- the solver ---------------------------------------------------------------------------------

def _kkt(w: np.ndarray, g: np.ndarray, lam: float) -> np.ndarray:
    """Per-coordinate violation of the optimality conditions of f + lam ||.||_1."""
    return np.where(w != 0, np.abs(g + lam * np.sign(w)), np.maximum(np.abs(g) - lam, 0.0))


def _cd_quadratic(g: np.ndarray, H: np.ndarray, w: np.ndarray, lam: float, sweeps: int = 500, tol: float = 1e-13):
    """argmin_x g.(x-w) + 1/2 (x-w)' H (x-w) + lam ||x||_1 by cyclic coordinate descent."""
    x, d = w.copy(), np.zeros_like(w)
    diag = np.maximum(np.diag(H), 1e-12)
    Hd = np.zeros_like(w)
    for _ in range(sweeps):
        biggest = 0.0
        for j in range(len(x)):
            grad_j = g[j] + Hd[j]
            u = x[j] - grad_j / diag[j]
            new = np.sign(u) * max(abs(u) - lam / diag[j], 0.0)
            step = new - x[j]
            if step != 0.0:
                x[j] = new
                d[j] += step
                Hd += H[:, j] * step
                biggest = max(biggest, abs(step))
        if biggest < tol:
            break
    return x


def solve(problem: PoEProblem, lam: float, w0: np.ndarray | None = None, *, tol: float = 1e-9,
          max_iter: int = 100) -> Fit:
    """Minimise mean KL + lam ||w||_1 by active-set proximal Newton.

    Inner loop: Newton steps on the working set S (support plus the worst violators) with the exact
    float64 Hessian, until S meets the KKT conditions to `tol`. Outer loop: one screening pass over
    all atoms; violators (beyond the problem's screen_tol) join S. Never raises on non-convergence:
    the Fit says so (`solve_path` raises).
    """
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    tol = max(tol, problem.screen_tol)  # no finer than the data resolve
    w = np.zeros(problem.K) if w0 is None else np.asarray(w0, dtype=np.float64).copy()
    total, status = 0, "max_iter"
    verified = np.zeros(problem.K, dtype=bool)  # atoms whose KKT conditions the exact pass confirmed
    for _ in range(50):
        g = problem.screen(w)
        viol = np.where((w != 0) | verified, 0.0, np.maximum(np.abs(g) - lam - problem.screen_tol, 0.0))
        support = np.flatnonzero(w)
        new = np.argsort(-viol)[: max(5, len(support))]
        new = new[viol[new] > 0]
        if len(new) == 0 and (total > 0 or len(support) == 0):
            status = "converged"
            break
        S = np.union1d(support, new)
        inner_ok = False
        for _ in range(max_iter):
            kl, gS, H = problem.derivatives(w, S, hessian=True)
            if _kkt(w[S], gS, lam).max() <= tol:
                inner_ok = True
                break
            F = kl + lam * np.abs(w).sum()
            xS = _cd_quadratic(gS, H + 1e-10 * np.eye(len(S)), w[S], lam)
            d = np.zeros(problem.K)
            d[S] = xS - w[S]
            delta = gS @ d[S] + lam * (np.abs(xS).sum() - np.abs(w[S]).sum())
            t, accepted = 1.0, False
            while t > 1e-10:
                cand = w + t * d
                Fc = problem.kl(cand) + lam * np.abs(cand).sum()
                # Near the optimum the predicted decrease drops below what F resolves in float64;
                # the quadratic model is exact there, so take the full step.
                if Fc <= F + 1e-4 * t * delta or -delta <= 1e-13 * max(1.0, abs(F)):
                    accepted = True
                    break
                t *= 0.5
            total += 1
            if not accepted:
                status = "line_search_failed"
                break
            w = cand
        if not inner_ok:
            break
        verified[:] = False
        verified[S] = True
    kl, gS, _ = problem.derivatives(w, np.flatnonzero(w))
    support = np.flatnonzero(w)
    kkt = float(_kkt(w[support], gS, lam).max()) if len(support) else 0.0
    converged = status == "converged" and kkt <= tol
    return Fit(lam=lam, weights=w, objective=kl + lam * np.abs(w).sum(), kl=kl, iterations=total, kkt=kkt,
               converged=converged, status="converged" if converged else status)


def lambda_path(problem: PoEProblem, n: int = 20, ratio: float = 1e-3) -> np.ndarray:
    """n log-spaced values from lambda_max (w = 0) down to ratio * lambda_max."""
    if n < 1 or not 0 < ratio < 1:
        raise ValueError(f"lambda path needs n >= 1 and 0 < ratio < 1 (got n={n}, ratio={ratio})")
    return problem.lambda_max() * np.logspace(0, np.log10(ratio), n)


def solve_path(problem: PoEProblem, lambdas: np.ndarray, *, tol: float = 1e-9, max_iter: int = 100) -> list[Fit]:
    """Warm-started fits along decreasing lambdas (each starts from the previous weights).

    Raises NotConverged (with lambda, iterations and KKT violation) if any fit misses its tolerance.
    """
    lambdas = np.asarray(lambdas, dtype=np.float64)
    if (lambdas < 0).any():
        raise ValueError(f"lambda must be >= 0, got {lambdas.min()}")
    w, fits = np.zeros(problem.K), []
    for lam in lambdas:
        fit = solve(problem, lam, w, tol=tol, max_iter=max_iter)
        if not fit.converged:
            raise NotConverged(f"PoE fit did not converge at lambda={lam:.3g}: status {fit.status}, "
                               f"{fit.iterations} iterations, KKT violation {fit.kkt:.2e} (tol {tol:.0e})")
        w = fit.weights
        fits.append(fit)
        log.info("lambda %.3g: kl %.5f, nnz %d, %d iterations", lam, fit.kl, fit.nnz, fit.iterations)
    return fits


def solve_cvxpy(problem: PoEProblem, lam: float, solver: str = "CLARABEL", **kwargs) -> tuple[np.ndarray, float]:
    """Reference solution with cvxpy's exponential-cone log_sum_exp (small problems only)."""
    import cvxpy as cp

    L = problem.L.double().numpy()
    w = cp.Variable(problem.K)
    Z = cp.hstack([L[:, n].T @ w for n in range(problem.N)])
    Z = cp.reshape(Z, (problem.N, problem.V), order="C")
    obj = problem.const - problem.ep_mean.numpy() @ w + cp.sum(cp.log_sum_exp(Z, axis=1)) / problem.N
    prob = cp.Problem(cp.Minimize(obj + lam * cp.norm1(w)))
    prob.solve(solver=solver, **kwargs)
    if w.value is None:
        raise NotConverged(f"cvxpy ({solver}) returned no solution: status {prob.status}")
    return np.asarray(w.value), float(prob.value)
