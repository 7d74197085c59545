"""`tokendyn icl`: theory, baselines and training for in-context regression (spec seed003)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tokendyn.cli._common import choices, default_threads, require, require_count
from tokendyn.errors import ConfigError

SettingChoice = choices("cpu", "paper", "bushy")
PriorChoice = choices("tree", "gauss", "gauss-iso", "flat")
PolicyChoice = choices("linear", "fixed-nonlinear", "greedy", "coarse-to-fine")
ModelChoice = choices("lin", "lin+ffout", "ff", "lsa-full", "lsa-full+ff")
FFChoice = choices("F2", "F1")
DeviceChoice = choices("auto", "cpu", "cuda")


def _int_list(text: str, field: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            field, f"{text!r} is not a comma-separated list of integers", "write e.g. 1,2,3"
        ) from None
    if not values or min(values) < 1:
        raise ConfigError(field, "needs integers ≥ 1", "write e.g. 1,2,3")
    return values


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False)
    for key, value in result.items():
        table.add_row(key, json.dumps(value) if isinstance(value, list | dict) else str(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the `icl` sub-group: theory, baselines, train."""
    from tokendyn.cli._common import friendly_errors

    icl = typer.Typer(
        no_args_is_help=True,
        help="In-context regression: adaptive-inference theory, baselines, training.",
    )
    app.add_typer(icl, name="icl")

    @icl.command()
    @friendly_errors
    def theory(
        setting: Annotated[SettingChoice, typer.Option(help="parameter row of the spec")] = "cpu",
        prior: Annotated[PriorChoice, typer.Option(help="latent prior")] = "tree",
        policy: Annotated[PolicyChoice, typer.Option(help="measurement policy")] = "greedy",
        depths: Annotated[str, typer.Option(help="comma-separated depths L")] = "1,2,3,4",
        heads: Annotated[int, typer.Option(help="channels H per layer")] = 1,
        n_seq: Annotated[int, typer.Option("--n-seq", help="Monte-Carlo sequences")] = 4000,
        seed: Annotated[int, typer.Option(help="Monte-Carlo seed")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Noisy-target MSE of a mean-field measurement policy at each depth."""
        from tokendyn.theory.icl import get_setting, make_prior
        from tokendyn.theory.icl.theory import run_policy

        Ls = _int_list(depths, "depths")
        require_count("heads", heads)
        require_count("n_seq", n_seq, low=2)
        require_count("depths", max(Ls))
        require("seed", seed >= 0, seed, "use --seed ≥ 0")
        s = get_setting(setting.value)
        res = run_policy(
            make_prior(s, prior.value), s.sigma, s.N, policy.value, max(Ls), heads, n_seq, seed
        )
        _emit(
            {
                "setting": s.name,
                "prior": prior.value,
                "policy": policy.value,
                "depths": Ls,
                "mse": [float(res.mse[L - 1]) for L in Ls],
                "mse_stderr": [float(res.mse_stderr[L - 1]) for L in Ls],
            },
            as_json,
        )

    @icl.command()
    @friendly_errors
    def baselines(
        setting: Annotated[SettingChoice, typer.Option(help="parameter row of the spec")] = "cpu",
        prior: Annotated[PriorChoice, typer.Option(help="latent prior")] = "tree",
        n_seq: Annotated[int, typer.Option("--n-seq", help="test sequences")] = 4000,
        seed: Annotated[int, typer.Option(help="test-set seed")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Noisy-target MSE of the full-context baselines (Bayes, ridge, GD, prior mean, ...)."""
        import numpy as np

        from tokendyn.theory.icl import get_setting, make_prior
        from tokendyn.theory.icl.baselines import all_baselines
        from tokendyn.theory.icl.tasks import sample_tasks

        require_count("n_seq", n_seq, low=2)
        require("seed", seed >= 0, seed, "use --seed ≥ 0")
        s = get_setting(setting.value)
        p = make_prior(s, prior.value)
        test = sample_tasks(p, s.N, s.sigma, n_seq, np.random.default_rng(seed))
        val = sample_tasks(p, s.N, s.sigma, 1000, np.random.default_rng(seed + 1))
        res = all_baselines(p, test, val)
        _emit(
            {
                "setting": s.name,
                "prior": prior.value,
                **{k: v[0] for k, v in res.items()},
                "stderr": {k: v[1] for k, v in res.items()},
            },
            as_json,
        )

    @icl.command()
    @friendly_errors
    def train(
        ctx: typer.Context,
        setting: Annotated[SettingChoice, typer.Option(help="parameter row of the spec")] = "cpu",
        prior: Annotated[PriorChoice, typer.Option(help="latent prior")] = "tree",
        model: Annotated[ModelChoice, typer.Option(help="model family")] = "ff",
        depth: Annotated[int, typer.Option(help="depth L")] = 4,
        heads: Annotated[int, typer.Option(help="heads H per layer")] = 1,
        steps: Annotated[int, typer.Option(help="Adam steps per seed")] = 3000,
        seeds: Annotated[
            str, typer.Option(help="comma-separated seeds; best validation kept")
        ] = "0,1",
        batch: Annotated[int, typer.Option(help="fresh sequences per step")] = 256,
        lr: Annotated[float, typer.Option(help="peak learning rate")] = 1e-2,
        ff_kind: Annotated[FFChoice, typer.Option("--ff-kind", help="ff variant")] = "F2",
        device: Annotated[DeviceChoice, typer.Option(help="auto, cpu or cuda")] = "auto",
        n_test: Annotated[int, typer.Option("--n-test", help="test sequences")] = 10_000,
        n_probe: Annotated[int, typer.Option("--n-probe", help="probe-fitting sequences")] = 20_000,
        out: Annotated[Path | None, typer.Option("--out", help="folder for checkpoints")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    ) -> None:
        """Train a model (several seeds, best validation kept); test MSE and level-k probes."""
        import numpy as np

        from tokendyn.app.store import claim_folder
        from tokendyn.engine.device import resolve_device
        from tokendyn.theory.icl import get_setting, make_prior
        from tokendyn.theory.icl.priors import TreePrior
        from tokendyn.theory.icl.probes import probe_model
        from tokendyn.theory.icl.tasks import sample_tasks
        from tokendyn.theory.icl.train import evaluate_mse, make_test_set, train_config
        from tokendyn.theory.icl.train import train as train_model

        seed_list = [int(v) for v in seeds.split(",") if v.strip().isdigit()]
        if not seed_list or len(seed_list) != len([v for v in seeds.split(",") if v.strip()]):
            raise ConfigError("seeds", f"{seeds!r} is not a list of integers ≥ 0", "write e.g. 0,1")
        require_count("depth", depth)
        require_count("heads", heads)
        require_count("steps", steps)
        require_count("batch", batch)
        require_count("n_probe", n_probe, low=100)
        require_count("n_test", n_test, low=10)
        if out is not None:
            claim_folder(out)
        s = get_setting(setting.value)
        p = make_prior(s, prior.value)
        cfg = train_config(
            steps=steps,
            batch=batch,
            lr=lr,
            lr_min=3e-4 if lr > 3e-4 else lr / 10,
            seeds=tuple(seed_list),
            device=device.value,
            progress=not as_json,
        )
        dev = str(resolve_device(cfg.device))
        default_threads(ctx, cfg.threads)
        res = train_model(s, p, model.value, depth, heads, cfg, out, ff_kind=ff_kind.value)
        test = make_test_set(s, p, n_test)
        mse, se = evaluate_mse(res.model, test, dev)
        level_acc: list[float] = []
        if isinstance(p, TreePrior):
            probe_train = sample_tasks(p, s.N, s.sigma, n_probe, np.random.default_rng(11))
            level_acc = probe_model(res.model, p, probe_train, test, dev)[-1].tolist()
        result = {
            "setting": s.name,
            "prior": prior.value,
            "model": model.value,
            "depth": depth,
            "heads": heads,
            "steps": steps,
            "test_mse": mse,
            "test_mse_stderr": se,
            "level_accuracy": level_acc,
            "val_mse": res.val_mse,
            "best_seed": res.seed,
            "device": dev,
        }
        if out is not None:
            (out / "result.json").write_text(json.dumps(result, indent=2))
        _emit(result, as_json)
