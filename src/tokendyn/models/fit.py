"""Fit the attention-only particle model to a trajectory: a per-layer β (and optionally a per-layer
time step) by gradient descent through the engine.

The model: L layers (engine `Layer`s, attention only) under a block scheme, one Euler step per layer

    x_{l+1} = x_l + τ_l v_l(x_l; c_l β_l),   x_0 = r_0,

where layer l's heads score with c_l times their own β (c_l = 1, τ_l = 1 is the layers as given).
Parameters θ_l = log c_l (and φ_l = log τ_l with `fit_dt`) minimise the relative trajectory error

    loss(θ, φ) = (1/L) Σ_{l=1..L} Σ_i |x_l,i − r_l,i|² / Σ_i |r_l,i|²

by L-BFGS (strong Wolfe line search) through the dense backend's autograd. On a model the fitted
per-layer effective β is c_l times the weight-read one (`weights.weight_report`: per head
λ_max(B_h) ρ_l; reported as the mean over heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tokendyn.engine.blocks import Block, Layer, LayerSchedule
from tokendyn.models.compare import attention_only
from tokendyn.models.open import OpenedModel
from tokendyn.models.weights import read_layers, residual_stream, scheme_of, weight_report


@dataclass
class FitResult:
    """c (L,) β multipliers, tau (L,) time steps, the final and initial loss, iterations."""

    c: list[float]
    tau: list[float]
    loss: float
    initial_loss: float
    iterations: int


def rollout(
    block: Block, layers: list[Layer], x0: torch.Tensor, c: torch.Tensor, tau: torch.Tensor
) -> list[torch.Tensor]:
    """x_0..x_L of the module docstring (differentiable in c, tau, x0)."""
    base = [[h.beta for h in layer.attention.heads] for layer in layers]
    xs = [x0]
    try:
        for i, layer in enumerate(layers):
            for h, b in zip(layer.attention.heads, base[i], strict=True):
                h.beta = c[i] * b
            xs.append(xs[-1] + tau[i] * block(xs[-1], float(i)))
    finally:
        for layer, betas in zip(layers, base, strict=True):
            for h, b in zip(layer.attention.heads, betas, strict=True):
                h.beta = b
    return xs


def trajectory_loss(xs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    terms = [(x - r).pow(2).sum() / r.pow(2).sum() for x, r in zip(xs[1:], target[1:], strict=True)]
    return torch.stack(terms).mean()


def fit_layers(
    layers: list[Layer],
    scheme: str,
    target: torch.Tensor,
    *,
    fit_dt: bool = False,
    max_iter: int = 200,
    norm_type: str = "layernorm",
) -> FitResult:
    """Fit c (and τ with fit_dt) to target (L+1, N, d) from c = τ = 1 (module docstring)."""
    L = len(layers)
    block = Block(LayerSchedule(layers, 1.0), norm=scheme, norm_type=norm_type)  # type: ignore[arg-type]
    target = target.to(torch.float64)
    theta = torch.zeros(L, dtype=torch.float64, requires_grad=True)
    phi = torch.zeros(L, dtype=torch.float64, requires_grad=fit_dt)
    params = [theta, phi] if fit_dt else [theta]
    opt = torch.optim.LBFGS(
        params,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        history_size=20,
    )

    def loss_fn() -> torch.Tensor:
        return trajectory_loss(rollout(block, layers, target[0], theta.exp(), phi.exp()), target)

    with torch.no_grad():
        initial = float(loss_fn())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(loss_fn())
    state = opt.state[opt._params[0]]
    return FitResult(
        theta.exp().tolist(), phi.exp().tolist(), final, initial, int(state.get("n_iter", 0))
    )


def fit_model(
    opened: OpenedModel, ids: list[int], *, fit_dt: bool = False, max_iter: int = 200
) -> dict[str, Any]:
    """The fit on a model's real residual stream, beside the weight-read effective β."""
    layers = attention_only(read_layers(opened))
    target, _ = residual_stream(opened, ids)
    kind = "rmsnorm" if opened.architecture.norm == "rms" else "layernorm"
    result = fit_layers(
        layers,
        scheme_of(opened),
        target.double().cpu(),
        fit_dt=fit_dt,
        max_iter=max_iter,
        norm_type=kind,
    )
    report = weight_report(opened, ids)
    read = [sum(b) / len(b) for b in report["effective_beta"]]
    return {
        "model": opened.name,
        "layers": report["layers"],
        "beta_scale": result.c,
        "dt": result.tau,
        "effective_beta_weights": read,
        "effective_beta_fit": [c * b for c, b in zip(result.c, read, strict=True)],
        "loss": result.loss,
        "initial_loss": result.initial_loss,
        "iterations": result.iterations,
    }
