"""Sinkhorn (doubly-stochastic) self-attention, the continuous Sinkformer.

With ε = 1/β and scores s_ij = β⟨Q x_i, K x_j⟩, the entropic plan with uniform marginals is
P_ij = (1/N²) exp(f_i + g_j + s_ij) (potentials in units of ε), where the Schrödinger system

    f_i = −log (1/N) Σ_j exp(g_j + s_ij),     g_j = −log (1/N) Σ_i exp(f_i + s_ij)

is solved by log-domain Sinkhorn (warm-started from the previous call) until the row-marginal error
max_i |N Σ_j P_ij − 1| < tol, or max_iter. The velocity is Γ(x_i) = N Σ_j P_ij V x_j, evaluated as
the row-normalised softmax with key bias g_j (rows exact; columns within tol). Exact property:
the mean obeys α' = Vα for any N.

The default tol depends on the cloud's dtype (`default_tol`): 1e-9 in float64, 100 ε ≈ 1.2e-5 in
float32, where 1e-9 lies below the resolution and was never reached. An evaluation that stops at
max_iter is counted (`capped`, `worst_error`) and warned about once per field, with its error.

Gradients: by the implicit-function theorem, not through the iterations. The solve runs without
autograd; one more sweep g = T(g*, q, k), T(g) = log N − lse_col(k, q, log N − lse_row(q, k, g)),
is recorded, and a hook replaces the gradient a = ∂L/∂g reaching it by u = (I − Jᵀ)⁻¹ a,
J = ∂T/∂g, found by the fixed-point iteration u ← a + Jᵀu (vector-Jacobian products of T; it
contracts at Sinkhorn's own rate, on the zero-sum vectors where a lies because the output is
invariant under g → g + c) until max|Δu| ≤ tol·max|u|. So the gradient is that of the exact
balanced plan whatever the warm start or iteration count, and memory stays O(N) per head on
the tiled backend.
"""

from __future__ import annotations

import math
import warnings

import torch

from tokendyn.engine.attention.base import AttentionField, Head
from tokendyn.errors import ConfigError

# The default tolerance: TOL_EPS machine epsilons of the dtype, never below TOL_FLOOR.
TOL_EPS = 100
TOL_FLOOR = 1e-9


def default_tol(dtype: torch.dtype) -> float:
    """max(TOL_FLOOR, TOL_EPS·ε): 1e-9 in float64, 1.19e-5 in float32 (reachable by both)."""
    return max(TOL_FLOOR, TOL_EPS * torch.finfo(dtype).eps)


class SinkhornAttention(AttentionField):
    """Sinkhorn (doubly stochastic) self-attention: the softmax kernel balanced by Sinkhorn
    iterations until both marginals are uniform (module docstring)."""

    variant = "sinkhorn"

    def __init__(
        self, heads: list[Head], *, tol: float | None = None, max_iter: int = 1000, **kwargs
    ) -> None:
        if kwargs.get("mask") is not None:
            raise ConfigError(
                "mask",
                "Sinkhorn attention has no masked form",
                "use --mask none with --attention sinkhorn",
            )
        if kwargs.get("normalise", "softmax") != "softmax":
            raise ConfigError(
                "normalise",
                "Sinkhorn attention is normalised by its marginals",
                "use --normalise softmax with --attention sinkhorn",
            )
        if tol is not None and not (tol > 0):
            raise ConfigError("sinkhorn_tol", f"is {tol}, it must be > 0", "use e.g. 1e-9")
        if max_iter < 1:
            raise ConfigError(
                "sinkhorn_max_iter", f"is {max_iter}, it must be ≥ 1", "use e.g. 1000"
            )
        super().__init__(heads, **kwargs)
        self.tol, self.max_iter = tol, max_iter
        self._g: dict[int, torch.Tensor] = {}
        self.last_iterations = 0
        self.last_error = 0.0
        self.capped = 0  # evaluations that stopped at max_iter
        self.worst_error = 0.0  # the largest marginal error among them

    def potentials(
        self, index: int, head: Head, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, f, g) at convergence for one head; q = β x Qᵀ, k = x Kᵀ. Differentiable in q
        and k by the implicit-function theorem (module docstring)."""
        log_n = math.log(x.shape[1])
        q = head.scale(x) * (x @ head.Q.T)
        k = x @ head.K.T
        with torch.no_grad():
            f, g = self._solve(index, q, k)
        if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):
            return q, k, f, g
        g = self._implicit(q, k, g)
        f = log_n - self.backend.logsumexp(q, k, key_bias=g)
        return q, k, f, g

    def _sweep(self, q: torch.Tensor, k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """One Sinkhorn sweep T(g): the row potential f from g, then the column potential."""
        log_n = math.log(q.shape[1])
        f = log_n - self.backend.logsumexp(q, k, key_bias=g)
        return log_n - self.backend.logsumexp(k, q, key_bias=f)

    def _implicit(self, q: torch.Tensor, k: torch.Tensor, g_star: torch.Tensor) -> torch.Tensor:
        """g = T(g*) with its gradient to q, k taken through (I − Jᵀ)⁻¹ (module docstring)."""
        g0 = g_star.detach().requires_grad_()
        g = self._sweep(q, k, g0)

        inside = [False]  # the vector-Jacobian products below pass through this hook too

        def adjoint(a: torch.Tensor | None) -> torch.Tensor | None:
            if a is None or inside[0]:  # None: an undefined (all-zero) gradient
                return a
            inside[0] = True
            tol = default_tol(a.dtype) if self.tol is None else self.tol
            try:
                u = a
                for _ in range(self.max_iter):
                    (jtu,) = torch.autograd.grad(g, g0, u, retain_graph=True)
                    u_new = a + jtu
                    change = (u_new - u).abs().max()
                    u = u_new
                    if change <= tol * u.abs().max():
                        return u
            finally:
                inside[0] = False
            warnings.warn(
                f"Sinkhorn's implicit gradient did not reach tol={tol:g} in "
                f"{self.max_iter} iterations; raise sinkhorn_max_iter or lower beta",
                RuntimeWarning,
                stacklevel=2,
            )
            return u

        g.register_hook(adjoint)
        return g

    def _solve(
        self, index: int, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-domain Sinkhorn from the previous call's g (module docstring); returns (f, g)."""
        log_n = math.log(q.shape[1])
        g = self._g.get(index)
        if g is None or g.shape != q.shape[:2] or g.dtype != q.dtype or g.device != q.device:
            g = torch.zeros(q.shape[:2], dtype=q.dtype, device=q.device)
        tol = default_tol(q.dtype) if self.tol is None else self.tol
        f = None
        error = math.inf
        for iteration in range(1, self.max_iter + 1):
            self.last_iterations = iteration
            row_lse = self.backend.logsumexp(q, k, key_bias=g)
            if f is not None:
                error = (torch.exp(f + row_lse - log_n) - 1).abs().max().item()
            f = log_n - row_lse
            if error < tol:
                break
            g = log_n - self.backend.logsumexp(k, q, key_bias=f)
        else:
            self._capped(tol, error)
        self._g[index] = g
        self.last_error = error
        assert f is not None
        return f, g

    def _capped(self, tol: float, error: float) -> None:
        """Count an evaluation that stopped at max_iter; warn on the first one only."""
        self.capped += 1
        self.worst_error = max(self.worst_error, error)
        if self.capped == 1:
            warnings.warn(
                f"Sinkhorn did not reach tol={tol:g} in {self.max_iter} iterations "
                f"(marginal error {error:.2e}); raise sinkhorn_max_iter or lower beta. "
                "Warned once per field: later evaluations at the cap are counted in "
                "field.capped, their largest error in field.worst_error",
                RuntimeWarning,
                stacklevel=5,
            )

    def head_output(self, index: int, head: Head, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """The potentials need every token; only the final reduction is restricted to `rows`."""
        q, k, _, g = self.potentials(index, head, x)
        return self.backend.attend(q[:, rows], k, x @ head.V.T, key_bias=g).out

    def plan(self, x: torch.Tensor, head_index: int = 0) -> torch.Tensor:
        """The dense transport plan P (B, N, N) for small clouds (rows and columns sum to 1/N)."""
        xb = x if x.dim() == 3 else x.unsqueeze(0)
        head = self.heads[head_index]
        q, k, f, g = self.potentials(head_index, head, xb)
        n = xb.shape[1]
        return torch.exp(f[:, :, None] + g[:, None, :] + q @ k.transpose(1, 2) - 2 * math.log(n))
