"""`tokendyn dmft`: the 1-bit self-attention network and its mean-field map (lyapunov, orbit,
bifurcation, finite). JSON outputs are a contract; defaults follow the spec's protocol (about
100 000 transient steps, 20 000 recorded)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from tokendyn.cli._common import choices, require, require_count

Start = choices("zoom", "full", "x0")
Protocol = choices("v1", "continuation")
Colouring = choices("lyapunov", "paper")
Method = choices("binomial", "spins")

StartOpt = Annotated[Start, typer.Option(help="stored 'zoom'/'full' window, or fresh 'x0'")]
RecordOpt = Annotated[int, typer.Option("--n-record", help="recorded steps")]
TransientOpt = Annotated[
    int | None,
    typer.Option(
        "--n-transient", help="transient steps (default: the protocol's, up to t=119 999)"
    ),
]
GammaOpt = Annotated[float, typer.Option(help="attention gain γ (paper: 220)")]
EpsOpt = Annotated[float, typer.Option("--epsilon", help="positional share ε (paper: 0.02)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def _check_steps(n_record: int, n_transient: int | None) -> None:
    """The recorded and transient step counts every command takes."""
    require_count("n_record", n_record)
    if n_transient is not None:
        require_count("n_transient", n_transient, low=0)


def _model(gamma: float, epsilon: float):
    from tokendyn.theory.dmft.model import Params, paper_model

    return paper_model(None, **Params(gamma=gamma, epsilon=epsilon).__dict__)


def register(app: typer.Typer) -> None:
    """Add the `tokendyn dmft` group to the main CLI."""
    from tokendyn.cli._common import friendly_errors

    dmft = typer.Typer(
        no_args_is_help=True,
        help="1-bit self-attention (DMFT): mean-field map, Lyapunov spectra, finite-N networks.",
    )
    app.add_typer(dmft, name="dmft")

    @dmft.command()
    @friendly_errors
    def lyapunov(
        beta: Annotated[float, typer.Option(help="output inverse temperature β ≥ 0")],
        start: StartOpt = Start.zoom,
        n_record: RecordOpt = 20_000,
        n_transient: TransientOpt = None,
        gamma: GammaOpt = 220.0,
        epsilon: EpsOpt = 0.02,
        as_json: JsonOpt = False,
    ) -> None:
        """Lyapunov spectrum (largest first), regime, amplitude max|m^o_1| and period at one β."""
        from tokendyn.theory.dmft.runs import lyapunov_summary

        _check_steps(n_record, n_transient)
        require(
            "n_record", n_record >= 2, n_record, "use --n-record ≥ 2 (the period compares steps)"
        )
        out = lyapunov_summary(beta, start.value, n_record, n_transient, _model(gamma, epsilon))
        if as_json:
            print(json.dumps(out))
            return
        l1, l2 = out["lyapunov"][:2]
        print(
            f"β={out['beta']:g}: λ1={l1}, λ2={l2}, {out['regime']}, "
            f"amplitude={out['amplitude']:.4g}, period={out['period']}"
        )

    @dmft.command()
    @friendly_errors
    def orbit(
        beta: Annotated[float, typer.Option(help="output inverse temperature β ≥ 0")],
        start: StartOpt = Start.zoom,
        steps: Annotated[int, typer.Option(help="last K recorded steps to print")] = 24,
        n_record: RecordOpt = 20_000,
        n_transient: TransientOpt = None,
        gamma: GammaOpt = 220.0,
        epsilon: EpsOpt = 0.02,
        as_json: JsonOpt = False,
    ) -> None:
        """m^o = (m^o_1, m^o_2, m^o_3) of the last K recorded steps."""
        from tokendyn.errors import ConfigError
        from tokendyn.theory.dmft.runs import record

        _check_steps(n_record, n_transient)
        if not 1 <= steps <= n_record:
            raise ConfigError("steps", f"is {steps}", f"use 1 ≤ steps ≤ n_record = {n_record}")
        mo = record(beta, start.value, n_record, n_transient, _model(gamma, epsilon))[-steps:]
        if as_json:
            print(json.dumps({"beta": float(beta), "mo": mo.tolist()}))
            return
        for row in mo:
            print(" ".join(f"{v: .6f}" for v in row))

    @dmft.command()
    @friendly_errors
    def bifurcation(
        beta_min: Annotated[float, typer.Option("--beta-min", help="smallest β")],
        beta_max: Annotated[float, typer.Option("--beta-max", help="largest β")],
        out: Annotated[Path, typer.Option("--out", help="folder for .nc, PNGs, summary.json")],
        num: Annotated[int, typer.Option(help="number of β values (paper: 4001)")] = 4001,
        start: StartOpt = Start.zoom,
        protocol: Annotated[
            Protocol, typer.Option(help="v1: every β from the start; continuation")
        ] = Protocol.v1,
        chains: Annotated[int, typer.Option(help="continuation chains run side by side")] = 1,
        with_lyapunov: Annotated[
            bool, typer.Option("--lyapunov", help="Lyapunov spectra (regime colours)")
        ] = False,
        colouring: Annotated[
            Colouring, typer.Option(help="regime colours: lyapunov (needs --lyapunov) or paper")
        ] = Colouring.lyapunov,
        colour_max_y: Annotated[
            float | None, typer.Option("--colour-max-y", help="global max|m^o| for paper colours")
        ] = None,
        n_record: RecordOpt = 20_000,
        n_transient: TransientOpt = None,
        gamma: GammaOpt = 220.0,
        epsilon: EpsOpt = 0.02,
    ) -> None:
        """Bifurcation diagram of m^o against β, batched over β; writes bifurcation.nc,
        bifurcation_m{1,2,3}.png and summary.json into --out."""
        import numpy as np

        from tokendyn.app.store import claim_folder
        from tokendyn.theory.dmft.bifurcation import sweep
        from tokendyn.viz.dmft import plot_bifurcation

        _check_steps(n_record, n_transient)
        require("beta_min", math.isfinite(beta_min) and beta_min >= 0, beta_min, "use β ≥ 0")
        require(
            "beta_max",
            math.isfinite(beta_max) and beta_max >= beta_min,
            beta_max,
            f"use a finite --beta-max ≥ --beta-min = {beta_min}",
        )
        require_count("num", num)
        require(
            "colour_max_y",
            colour_max_y is None or (math.isfinite(colour_max_y) and colour_max_y > 0),
            colour_max_y,
            "use the global max |m^o| (> 0)",
        )
        claim_folder(out)
        ds = sweep(
            _model(gamma, epsilon),
            np.linspace(beta_min, beta_max, num),
            start.value,
            protocol.value,
            n_record,
            n_transient,
            chains=chains,
            with_lyapunov=with_lyapunov,
            colour_max_y=colour_max_y,
        )
        paths = [out / "bifurcation.nc"]
        ds.to_netcdf(paths[0], engine="h5netcdf")
        for f in range(ds.sizes["feature"]):
            path = out / f"bifurcation_m{f + 1}.png"
            plot_bifurcation(ds, f, colouring.value, path)
            paths.append(path)
        summary = {
            "beta": ds["beta"].values.tolist(),
            "amplitude": ds["amplitude"].values[0].tolist(),
            "period": [None if p < 0 else int(p) for p in ds["period"].values],
        }
        if "lyapunov" in ds:
            summary["lambda1"] = [float(x) for x in ds["lyapunov"].values[:, 0]]
        (out / "summary.json").write_text(json.dumps(summary).replace("-Infinity", "null"))
        paths.append(out / "summary.json")
        for p in paths:
            print(p)

    @dmft.command()
    @friendly_errors
    def finite(
        n_se: Annotated[int, typer.Option("--n-se", help="semantic spins N_se")],
        beta: Annotated[float, typer.Option(help="output inverse temperature β ≥ 0")],
        trials: Annotated[int, typer.Option(help="independent trials")] = 8,
        start: StartOpt = Start.zoom,
        method: Annotated[
            Method, typer.Option(help="binomial (block weights, O(1)/step) or spins")
        ] = Method.binomial,
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        tol: Annotated[float, typer.Option(help="distance counted as on the attractor")] = 0.05,
        n_record: RecordOpt = 20_000,
        n_transient: TransientOpt = None,
        gamma: GammaOpt = 220.0,
        epsilon: EpsOpt = 0.02,
        as_json: JsonOpt = False,
    ) -> None:
        """Finite-N_se network against the mean-field map: std and amplitude of m^o_1, fraction of
        trials staying on the mean-field attractor."""
        from tokendyn.theory.dmft.finite import finite_stats
        from tokendyn.theory.dmft.model import Params

        _check_steps(n_record, n_transient)
        require("seed", seed >= 0, seed, "use --seed ≥ 0")
        require_count("n_se", n_se)
        require_count("trials", trials)
        require("tol", math.isfinite(tol) and tol > 0, tol, "use a finite --tol > 0")
        res = finite_stats(
            beta,
            [n_se],
            trials,
            start.value,
            n_record,
            n_transient,
            seed,
            tol,
            Params(gamma=gamma, epsilon=epsilon),
            method.value,
        )
        out = {"n_se": n_se, "beta": res["beta"], **res["finite"][0]}
        out.update(mf_std=res["mf_std"], mf_amplitude=res["mf_amplitude"])
        if as_json:
            print(json.dumps(out))
            return
        print(
            ", ".join(
                f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()
            )
        )
