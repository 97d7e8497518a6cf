"""PoE solver benchmark: the fast solver against cvxpy where cvxpy finishes, and alone at full size.

    python benchmarks/poe_solver.py [--threads 1] [--K 100 --N 64 --V 49152] [--skip-cvxpy]

Log-probs are realistic synthetic ones: per context a Zipf-shaped base distribution over V tokens,
each atom the base plus its own sparse token boosts (a prompt shifts a few hundred tokens) plus
noise; the target is a sparse signed product of three atoms plus noise. Prints a table of times and
objective gaps, ratios, and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from softlens.poe import PoEProblem, lambda_path, solve_cvxpy, solve_path


def synthetic(N: int, K: int, V: int, seed: int = 0, dtype=torch.float32) -> PoEProblem:
    g = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, V + 1, dtype=torch.float32)
    base = -1.1 * ranks.log() + 0.5 * torch.randn(N, V, generator=g)            # (N, V)
    boost = torch.zeros(K, V)
    for k in range(K):
        idx = torch.randint(0, V, (min(300, V // 4),), generator=g)
        boost[k, idx] = 2.0 * torch.rand(len(idx), generator=g) + 1.0
    logits = base[None] + boost[:, None, :] + 0.3 * torch.randn(K, N, V, generator=g)
    L = torch.log_softmax(logits, -1)                                             # (K, N, V)
    w_true = torch.zeros(K)
    w_true[:3] = torch.tensor([0.9, -0.3, 0.4])
    target = torch.log_softmax(torch.einsum("k,knv->nv", w_true, L) + 0.2 * torch.randn(N, V, generator=g), -1)
    return PoEProblem(L.to(dtype), target.to(dtype))


def fast_path(p: PoEProblem, n: int):
    t = time.perf_counter()
    fits = solve_path(p, lambda_path(p, n, 1e-3))
    return fits, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--K", type=int, default=100)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--V", type=int, default=49152)
    ap.add_argument("--path", type=int, default=20)
    ap.add_argument("--skip-cvxpy", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    result = {"threads": a.threads}

    if not a.skip_cvxpy:
        print("small problems (float64), objective at 5 lambdas of a 20-lambda path:")
        print(f"{'K':>4} {'N':>4} {'V':>5} {'solver':>9} {'time_s':>8} {'max_rel_gap':>12}  (gap = (ours - cvxpy)/cvxpy; < 0: ours lower)")
        rows = []
        for K, N, V in [(5, 8, 64), (10, 8, 256), (20, 16, 512)]:
            p = synthetic(N, K, V, dtype=torch.float64)
            fits, t_fast = fast_path(p, 20)
            picked = fits[::5]
            print(f"{K:>4} {N:>4} {V:>5} {'softlens':>9} {t_fast:>8.3f} {'':>12}")
            for solver, kw in [("CLARABEL", {}), ("SCS", {"eps": 1e-9, "max_iters": 100000})]:
                t, gaps = time.perf_counter(), []
                for f in picked:
                    w, _ = solve_cvxpy(p, f.lam, solver, **kw)
                    ref = p.kl(w) + f.lam * np.abs(w).sum()
                    gaps.append((f.objective - ref) / abs(ref))
                t_cvx = (time.perf_counter() - t) / len(picked) * len(fits)  # per whole path
                print(f"{K:>4} {N:>4} {V:>5} {solver:>9} {t_cvx:>8.3f} {max(gaps, key=abs):>12.2e}")
                rows.append({"K": K, "N": N, "V": V, "solver": solver, "cvxpy_path_s": t_cvx, "softlens_path_s": t_fast,
                             "speedup": t_cvx / t_fast, "max_rel_gap": max(gaps, key=abs)})
        result["small"] = rows
        print("speed-ups (cvxpy path time / softlens path time): "
              + ", ".join(f"K={r['K']} {r['solver']} {r['speedup']:.0f}x" for r in rows))

    p = synthetic(a.N, a.K, a.V)
    fits, t = fast_path(p, a.path)
    print(f"\nfull size K={a.K}, N={a.N}, V={a.V} (float32 storage, float64 sums), {a.threads} thread(s):")
    print(f"  {a.path}-lambda warm-started path: {t:.2f} s ({t / a.path:.2f} s per lambda), "
          f"{sum(f.iterations for f in fits)} Newton iterations, nnz at the end {fits[-1].nnz}, "
          f"max KKT violation {max(f.kkt for f in fits):.1e}")
    print(f"  goal: under 10 s -> ratio {t / 10:.2f} of the budget")
    result.update({"K": a.K, "N": a.N, "V": a.V, "path_len": a.path, "path_s": t,
                   "iterations": sum(f.iterations for f in fits), "goal_s": 10.0})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
