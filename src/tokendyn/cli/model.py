"""`tokendyn model …`: real Hugging Face models — hidden-state traces and per-layer metrics."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer

from tokendyn.cli._common import choices, err_console, friendly_errors

Dtype = choices("float32", "bfloat16", "float16", "float64")
View = choices("raw", "sphere")


def _read(field: str, path: Path) -> str:
    from tokendyn.errors import ConfigError

    if not path.is_file():
        raise ConfigError(field, f"no file at {path}", "give an existing text file")
    return path.read_text(encoding="utf-8")


@friendly_errors
def trace(
    model: Annotated[
        str,
        typer.Option(
            help="a model directory (save_pretrained) or a hub name, e.g. bert-base-uncased"
        ),
    ],
    out: Annotated[Path, typer.Option(help="the run store to write (.zarr)")],
    text: Annotated[
        Path | None, typer.Option(help="text file: one sequence per non-empty line")
    ] = None,
    ids: Annotated[
        Path | None, typer.Option(help="token-id file: one sequence per line of integers")
    ] = None,
    view: Annotated[
        View, typer.Option(help="raw hidden states or normalised onto the sphere")
    ] = View.raw,  # type: ignore[attr-defined]
    dtype: Annotated[Dtype, typer.Option(help="weights' dtype")] = Dtype.float32,  # type: ignore[attr-defined]
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    revision: Annotated[str | None, typer.Option(help="hub revision (branch, tag, commit)")] = None,
    batch_size: Annotated[int, typer.Option(help="sequences per forward pass")] = 8,
    attentions: Annotated[
        bool, typer.Option("--attentions", help="also store every layer's attention weights")
    ] = False,
    max_memory: Annotated[
        float | None, typer.Option(help="refuse models needing more GiB (default: free memory)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing store")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Hidden states of every layer as a run store (time = layer), readable by `tokendyn plot`,
    `multiscale phases` and `model metrics`."""
    from tokendyn.app.store import check_writable
    from tokendyn.app.traces import trace_summary, write_trace
    from tokendyn.errors import ConfigError
    from tokendyn.models.open import open_model, require_transformers
    from tokendyn.models.trace import inputs_from_ids, inputs_from_texts, parse_ids

    check_writable(out)  # before the model is loaded
    hf_logging = require_transformers().logging
    hf_logging.set_verbosity_error()  # the CLI's choice: no load reports, hints or bars
    hf_logging.disable_progress_bar()
    if (text is None) == (ids is None):
        raise ConfigError(
            "text", "give exactly one of --text and --ids", "pass --text FILE or --ids FILE"
        )
    limit = None if max_memory is None else int(max_memory * 2**30)
    opened = open_model(
        model,
        dtype=dtype.value,
        device=device,
        revision=revision,
        attentions=attentions,
        memory_limit=limit,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if text is not None:
            inputs = inputs_from_texts(opened, _read("text", text).splitlines(), str(text))
        else:
            inputs = inputs_from_ids(opened, parse_ids(_read("ids", ids)), str(ids))
    for warning in caught:  # truncation to the context: one line each
        err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)
    path = write_trace(
        opened,
        inputs,
        out,
        batch_size=batch_size,
        view=view.value,
        attentions=attentions,
        overwrite=overwrite,
        progress=progress,
    )
    print(trace_summary(path, inputs, opened))


@friendly_errors
def metrics(
    run: Annotated[Path, typer.Argument(help="a `tokendyn model trace` store")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    figures: Annotated[
        Path | None, typer.Option(help="folder for metrics.png and gram_layers.png")
    ] = None,
    threshold: Annotated[float, typer.Option(help="cluster distance between unit tokens")] = 0.1,
    k: Annotated[int, typer.Option(help="neighbours for the k-NN overlap")] = 10,
    max_tokens: Annotated[
        int, typer.Option(help="subsample for the pairwise metrics (TwoNN, k-NN, Gram, clusters)")
    ] = 4096,
    seed: Annotated[int, typer.Option(help="seed of the subsample and the nulls")] = 0,
) -> None:
    """Per-layer anisotropy, stable rank, rank-collapse residual, participation ratio, TwoNN
    intrinsic dimension, clusters, Gram histograms, k-NN overlap, attention rank and leaders,
    each beside a shuffled-token null."""
    from tokendyn.app.store import check_writable, open_run
    from tokendyn.models.metrics import MetricOptions, layer_metrics, metrics_json

    if figures is not None:
        check_writable(figures, "figures")
    opts = MetricOptions(threshold=threshold, k=k, max_tokens=max_tokens, seed=seed)
    result = layer_metrics(open_run(run), opts)
    data = metrics_json(result)
    if figures is not None:
        from tokendyn.viz.models import plot_gram_layers, plot_metric_curves

        plot_metric_curves(result, figures / "metrics.png")
        plot_gram_layers(result, figures / "gram_layers.png")
    if as_json:
        print(json.dumps(data))
        return
    names = [n for n in data if n not in ("layers", "gram_histogram")]
    print("layer " + " ".join(f"{n[:12]:>12}" for n in names))
    for i, layer in enumerate(data["layers"]):
        cells = []
        for n in names:
            v = data[n]["value"][i]
            cells.append(f"{'–' if v is None else f'{v:.4g}':>12}")
        print(f"{layer:>5} " + " ".join(cells))


def _open(model: str, dtype: str, device: str, revision: str | None) -> object:
    from tokendyn.models.open import open_model, require_transformers

    hf_logging = require_transformers().logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return open_model(model, dtype=dtype, device=device, revision=revision)


def _text_ids(opened: object, text: Path | None) -> list[int] | None:
    """The token ids of the text file's lines joined (truncated to the context with a warning)."""
    if text is None:
        return None
    from tokendyn.models.trace import inputs_from_texts

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        inputs = inputs_from_texts(opened, [" ".join(_read("text", text).split())], str(text))
    for warning in caught:
        err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False, soft_wrap=True)
    return list(inputs.ids[0])


ModelOpt = Annotated[
    str, typer.Option(help="a model directory (save_pretrained) or a hub name, e.g. gpt2")
]
TextOpt = Annotated[
    Path | None, typer.Option(help="text file (its lines joined into one sequence)")
]
DtypeOpt = Annotated[Dtype, typer.Option(help="weights' dtype")]  # type: ignore[valid-type]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda")]
RevisionOpt = Annotated[str | None, typer.Option(help="hub revision (branch, tag, commit)")]


@friendly_errors
def weights(
    model: ModelOpt,
    text: TextOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    figure: Annotated[Path | None, typer.Option(help="write the spectra figure (.png)")] = None,
    dtype: DtypeOpt = Dtype.float32,  # type: ignore[attr-defined]
    device: DeviceOpt = "cpu",
    revision: RevisionOpt = None,
) -> None:
    """Per layer and head: spectra of B = sym(W_Q W_Kᵀ)/√d_k and of W_O W_V, and the effective
    β = λ_max(B)·mean|y|² (y the layer's attention input, on --text or a seeded probe)."""
    from tokendyn.app.store import check_writable
    from tokendyn.models.weights import weight_report

    if figure is not None:
        check_writable(figure, "figure")
    opened = _open(model, dtype.value, device, revision)
    report = weight_report(opened, _text_ids(opened, text))
    if figure is not None:
        from tokendyn.viz.models import plot_weight_spectra

        plot_weight_spectra(report, figure)
    data = {k: v for k, v in report.items() if k != "spectra"}
    if as_json:
        print(json.dumps(data))
        return
    print(f"{data['model']}: {data['architecture']} ({data['scheme']}), {data['heads']} heads")
    print("layer  rho       beta_eff(min..max over heads)  max eig B   max Re eig OV")
    for i in data["layers"]:
        b = data["effective_beta"][i]
        eb = max(h["max"] for h in data["B"][i])
        eo = max(h["max"] for h in data["OV"][i])
        print(
            f"{i:>5}  {data['rho'][i]:<8.4g}  {min(b):<10.4g}..{max(b):<10.4g}          "
            f"{eb:<10.4g}  {eo:.4g}"
        )


def _ids_or_probe(opened: object, text: Path | None) -> list[int]:
    from tokendyn.models.weights import probe_ids

    ids = _text_ids(opened, text)
    return probe_ids(opened) if ids is None else ids


@friendly_errors
def compare(
    model: ModelOpt,
    out: Annotated[Path, typer.Option(help="folder for compare.json and compare.png")],
    text: TextOpt = None,
    dt: Annotated[
        list[float] | None, typer.Option(help="time steps per layer (repeat; default 1, 0.5, 0.25)")
    ] = None,
    far: Annotated[int, typer.Option(help="shared weights: run to far × depth")] = 10,
    seed: Annotated[int, typer.Option(help="seed of the random-weights null")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    dtype: DtypeOpt = Dtype.float32,  # type: ignore[attr-defined]
    device: DeviceOpt = "cpu",
    revision: RevisionOpt = None,
) -> None:
    """Integrate the particle system with the model's own weights from the layer-0 embeddings
    (attention only; attention + MLP; several dt) and compare with the real hidden states per
    layer, beside the identity and random-weights nulls."""
    from tokendyn.app.store import check_writable
    from tokendyn.models.compare import compare as run_compare
    from tokendyn.viz.models import plot_compare

    check_writable(out)
    opened = _open(model, dtype.value, device, revision)
    result = run_compare(
        opened, _ids_or_probe(opened, text), dts=tuple(dt or (1.0, 0.5, 0.25)), seed=seed, far=far
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result))
    plot_compare(result, path=out / "compare.png")
    if as_json:
        print(json.dumps(result))
        return
    last = result["layers"][-1]
    print(f"{result['model']}: cosine error at layer {last} (1 − cos, mean over tokens)")
    for group in ("error", "null_error"):
        for name, values in result[group]["cosine"].items():
            print(f"  {'null ' if group == 'null_error' else ''}{name:<24} {values[-1]:.4g}")
    if "long_run" in result:
        lr = result["long_run"]
        print(
            f"  autonomous run to t={lr['time'][-1]}: {lr['final_clusters']} clusters "
            f"from t={lr['settled_at']}"
        )
    print(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")


@friendly_errors
def fit(
    model: ModelOpt,
    text: TextOpt = None,
    fit_dt: Annotated[
        bool, typer.Option("--fit-dt", help="also fit a time step per layer")
    ] = False,
    max_iter: Annotated[int, typer.Option(help="L-BFGS iterations")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    dtype: DtypeOpt = Dtype.float32,  # type: ignore[attr-defined]
    device: DeviceOpt = "cpu",
    revision: RevisionOpt = None,
) -> None:
    """Fit a per-layer β multiplier (and with --fit-dt a time step) of the attention-only particle
    model to the real trajectory by gradient descent; print it beside the weight-read β."""
    from tokendyn.models.fit import fit_model

    opened = _open(model, dtype.value, device, revision)
    result = fit_model(opened, _ids_or_probe(opened, text), fit_dt=fit_dt, max_iter=max_iter)
    if as_json:
        print(json.dumps(result))
        return
    print(
        f"{result['model']}: loss {result['initial_loss']:.4g} → {result['loss']:.4g} "
        f"({result['iterations']} iterations)"
    )
    print("layer  beta_scale  dt        beta_eff(weights)  beta_eff(fit)")
    for i in result["layers"]:
        print(
            f"{i:>5}  {result['beta_scale'][i]:<10.4g}  {result['dt'][i]:<8.4g}  "
            f"{result['effective_beta_weights'][i]:<17.4g}  {result['effective_beta_fit'][i]:.4g}"
        )


def register(app: typer.Typer) -> None:
    """Add the `model` command group."""
    group = typer.Typer(
        help="Real Hugging Face transformers: traces and metrics.", no_args_is_help=True
    )
    group.command()(trace)
    group.command()(metrics)
    group.command()(weights)
    group.command()(compare)
    group.command()(fit)
    app.add_typer(group, name="model")
