"""`tokendyn multiscale …`: the moderate-interaction regime (pairing phase)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the `multiscale` command group."""
    from tokendyn.cli._common import friendly_errors

    group = typer.Typer(
        help="Multiscale dynamics in the moderate interaction regime.", no_args_is_help=True
    )

    @group.command()
    @friendly_errors
    def pairing(
        beta: Annotated[float, typer.Option(help="inverse temperature β > 0")],
        angles: Annotated[str, typer.Option(help="token angles on the circle, a,b,c (radians)")],
        gap: Annotated[
            float, typer.Option(help="merge when two tokens are closer (radians)")
        ] = 0.05,
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Equal-mass tokens on the circle (Q = K = V = I) until the first merge, against the
        exact isolated-pair integral for the closest pair."""
        import torch

        from tokendyn.cli._common import parse_numbers
        from tokendyn.errors import ConfigError
        from tokendyn.theory.multiscale import (
            angles_to_points,
            closest_pair,
            pair_merge_time,
            run_until_merge,
        )

        if not beta > 0:
            raise ConfigError("beta", f"is {beta}", "give β > 0")
        if not gap > 0:
            raise ConfigError("gap", f"is {gap}", "give a merge gap > 0 (radians)")
        points = angles_to_points(parse_numbers("angles", angles) or [])
        masses = torch.ones(points.shape[0], dtype=torch.float64)
        simulated, _, pair = run_until_merge(points, masses, beta, gap)
        i, j, theta0 = closest_pair(points)
        row = {
            "beta": beta,
            "merge_time_simulated": simulated,
            "merge_time_predicted": pair_merge_time(theta0, beta, gap),
            "pair": [i, j],
        }
        if list(pair) != [i, j]:
            row["first_merging_pair"] = list(pair)
        print(
            json.dumps(row)
            if as_json
            else f"pair {i},{j} (θ₀ = {theta0:.4f}): merged at t = {simulated:.6g}, "
            f"isolated-pair prediction {row['merge_time_predicted']:.6g}"
        )

    @group.command()
    @friendly_errors
    def phases(
        run: Annotated[Path, typer.Argument(help="a single-cloud run store (.zarr)")],
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
        plot: Annotated[
            Path | None,
            typer.Option(help="also draw the diagnostics against log t into this PNG"),
        ] = None,
    ) -> None:
        """Detected phase times (alignment, cluster formation, merges) and cluster statistics of a
        stored run, beside the limits' predictions."""
        from tokendyn.app.phases import detect_phases, diagnostics
        from tokendyn.app.store import open_run

        ds = open_run(run)
        diag = diagnostics(ds)
        result = detect_phases(ds, diag)
        print(result.to_json() if as_json else json.dumps(json.loads(result.to_json()), indent=2))
        if plot is not None:
            from tokendyn.viz.plot import plot_phase_diagnostics

            plot_phase_diagnostics(diag, result, plot)

    @group.command()
    @friendly_errors
    def merges(
        run: Annotated[Path, typer.Argument(help="a single-cloud run store (.zarr)")],
        t_max: Annotated[float, typer.Option(help="stop the reduced model at this time")] = float(
            "inf"
        ),
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Continue a clustered run with the reduced model (clusters as weighted Diracs, adaptive
        steps): every later merge with its time, pair, masses and normalised energy."""
        from dataclasses import asdict

        from tokendyn.app.phases import reduced_continuation
        from tokendyn.app.store import open_run

        events = reduced_continuation(open_run(run), t_max)
        if as_json:
            print(json.dumps({"merges": [asdict(e) for e in events]}))
            return
        for e in events:
            print(
                f"t = {e.time:.6g}: clusters {e.pair[0]} + {e.pair[1]} merge; masses "
                f"{', '.join(f'{m:.3f}' for m in e.masses)}; Ê {e.energy_before:.4f} → "
                f"{e.energy_after:.4f}"
            )

    app.add_typer(group, name="multiscale")
