"""Adaptive inference in deep constrained linear-attention transformers (spec seed003).

Trains `lin`, `lin+ffout`, `ff` (F2) on the CPU setting (d = 8, binary tree K = 4, N = 64, prior
seed 1) under the tree prior and its covariance-matched Gaussian; compares with the mean-field
theory (policies, J*_Gauss) and full-context baselines; checks the spec's CPU criteria (§6.2).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tokendyn.studies.common import Check, Section
from tokendyn.theory.icl.baselines import all_baselines
from tokendyn.theory.icl.priors import make_prior
from tokendyn.theory.icl.probes import probe_model
from tokendyn.theory.icl.settings import get_setting
from tokendyn.theory.icl.tasks import sample_tasks
from tokendyn.theory.icl.theory import j_star_gauss, run_policy
from tokendyn.theory.icl.train import TrainConfig, evaluate_mse, make_test_set, train
from tokendyn.viz.icl import depth_needed, mse_vs_context, mse_vs_depth, probe_heatmaps

STEPS = {True: 700, False: 3000}  # Adam steps per seed: quick / full
EPS = 0.01  # L*(ε): smallest depth whose MSE is within ε of the curve's own plateau


def depth_needed_of(mse: np.ndarray, eps: float = EPS) -> int:
    """Smallest L (1-based) with mse[L] ≤ min(mse) + ε."""
    return int(np.argmax(mse <= mse.min() + eps)) + 1


def run(quick: bool, out_dir: Path) -> Section:
    t0 = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    s = get_setting("cpu")
    depths = [1, 2, 3, 4] if quick else [1, 2, 3, 4, 6]
    cfg = TrainConfig(
        steps=STEPS[quick],
        seeds=(0, 1) if quick else (0, 1, 2),
        eval_every=100 if quick else 250,
        device="cpu",
    )
    n_test = 4000 if quick else 10_000
    models = {
        "tree": ["lin", "lin+ffout", "ff"] + ([] if quick else ["lsa-full"]),
        "gauss": ["lin", "ff"] + ([] if quick else ["lin+ffout"]),
    }
    panels, results, trained = {}, {}, {}
    for prior_name, names in models.items():
        prior = make_prior(s, prior_name)
        test = make_test_set(s, prior, n_test)
        val = sample_tasks(prior, s.N, s.sigma, 1000, np.random.default_rng(7))
        res = {}
        for name in names:
            for L in depths:
                r = train(s, prior, name, L, cfg=cfg)
                res[(name, L)] = evaluate_mse(r.model, test, "cpu")
                trained[(prior_name, name, L)] = r.model
        results[prior_name] = res
        policies = ["linear", "fixed-nonlinear", "greedy"] + (
            ["coarse-to-fine"] if prior_name == "tree" else []
        )
        Lmax = max(depths)
        theory = {p: run_policy(prior, s.sigma, s.N, p, Lmax, n_seq=n_test) for p in policies}
        base = all_baselines(prior, test, val)
        panels[prior_name] = {
            "models": {n: (depths, [res[(n, L)][0] for L in depths]) for n in names},
            "theory": {p: (list(range(1, Lmax + 1)), t.mse) for p, t in theory.items()},
            "jgauss": (
                list(range(1, Lmax + 1)),
                j_star_gauss(prior, s.sigma, s.N, list(range(1, Lmax + 1))),
            ),
            "baselines": {k: base[k][0] for k in ("bayes", "ridge", "gd1", "prior_mean")},
            "theory_results": theory,
        }
    figures = [
        (
            mse_vs_depth({k: v for k, v in panels.items()}, out_dir / "icl_mse_vs_depth.png"),
            "Test MSE vs depth: trained models (markers), theory policies (dashed), J*_Gauss "
            "(dotted) and full-context baselines (horizontal), tree and matched Gaussian priors.",
        )
    ]

    # depth needed vs tree depth K (theory policies: greedy ≈ ff, fixed-nonlinear ≈ lin+ffout)
    Ks, need = (
        [1, 2, 3, 4, 5],
        {"greedy (ff)": [], "fixed-nonlinear (lin+ffout)": [], "linear (lin)": []},
    )
    for K in Ks:
        prior_K = make_prior(s.with_(K=K), "tree")
        for label, pol in zip(need, ["greedy", "fixed-nonlinear", "linear"], strict=True):
            need[label].append(
                depth_needed_of(run_policy(prior_K, s.sigma, s.N, pol, 10, n_seq=1500).mse)
            )
    figures.append(
        (
            depth_needed(Ks, need, out_dir / "icl_depth_vs_K.png"),
            f"Depth needed L*(ε = {EPS}) to reach each policy's own plateau vs tree depth K "
            "(theory, H = 1, d = 8; K = 1 is the flat mixture).",
        )
    )

    # per-layer probes of the trained ff and lin at the largest quick depth (L = 4)
    tree = make_prior(s, "tree")
    probe_train = sample_tasks(tree, s.N, s.sigma, 20_000, np.random.default_rng(11))
    probe_test = make_test_set(s, tree, n_test)
    acc_ff = probe_model(trained[("tree", "ff", 4)], tree, probe_train, probe_test)
    acc_lin = probe_model(trained[("tree", "lin", 4)], tree, probe_train, probe_test)
    greedy_acc = panels["tree"]["theory_results"]["greedy"].level_accuracy[:4]
    figures.append(
        (
            probe_heatmaps(
                {
                    "ff (trained), probe on p≤ℓ": acc_ff,
                    "lin (trained), probe on p≤ℓ": acc_lin,
                    "theory: greedy posterior MAP": greedy_acc,
                },
                out_dir / "icl_probes.png",
            ),
            "Level-k node accuracy vs layer ℓ: QDA probes on the workspace of the trained "
            "depth-4 models, and the posterior MAP accuracy of the greedy policy.",
        )
    )

    # MSE vs context length N at L = 4 (theory; trained ff at N = 64, and more N in full mode)
    Ns = [16, 32, 64, 128, 256, 512]
    curves = {
        p: [run_policy(tree, s.sigma, N, p, 4, n_seq=2000).mse[-1] for N in Ns]
        for p in ("greedy", "fixed-nonlinear", "linear")
    }
    bayes_N = []
    for N in Ns:
        b = sample_tasks(tree, N, s.sigma, 1000, np.random.default_rng(N))
        bayes_N.append(all_baselines(tree, b, b)["bayes"][0])
    curves["Bayes (full context)"] = bayes_N
    trained_N = {64: results["tree"][("ff", 4)][0]}
    if not quick:
        for N in (16, 256):
            sN = s.with_(N=N)
            trained_N[N] = evaluate_mse(
                train(sN, tree, "ff", 4, cfg=cfg).model, make_test_set(sN, tree, n_test), "cpu"
            )[0]
    curves["ff L=4 (trained)"] = [trained_N.get(N, np.nan) for N in Ns]
    bound = run_policy(tree, s.sigma, 10**9, "greedy", 4, n_seq=2000).mse[-1]
    figures.append(
        (
            mse_vs_context(
                Ns,
                curves,
                {"channel-limited bound (N → ∞, greedy)": bound},
                out_dir / "icl_mse_vs_N.png",
            ),
            "MSE vs context length N at depth 4: theory policies approach the channel-"
            "limited bound (τ → 0) as N grows.",
        )
    )

    checks = criteria_checks(results, panels, acc_ff, s.sigma)
    section = Section(
        title="Adaptive inference in deep linear-attention transformers (ICL)",
        intro=(
            f"CPU setting (d = 8, b = 2, K = 4, r = 0.85, σ_leaf = σ = 0.1, N = 64, prior seed 1); "
            f"{cfg.steps} Adam steps × seeds {list(cfg.seeds)} per configuration; "
            f"{n_test} test sequences; section time {time.time() - t0:.0f} s."
        ),
        checks=checks,
        figures=figures,
        command="tokendyn reproduce --quick --section icl",
    )
    return section


def criteria_checks(results: dict, panels: dict, acc_ff: np.ndarray, sigma: float) -> list[Check]:
    """The spec's CPU success criteria (§6.2) as report checks."""
    tree, gauss = results["tree"], results["gauss"]
    ff34 = min(tree[("ff", 3)][0], tree[("ff", 4)][0])
    checks = [
        Check("tree: ff MSE at L = 3–4 (best) ≲ 0.06", 0.06, ff34, 0.0, "at_most"),
        Check(
            "tree: ff(L=4) − lin+ffout(L=4) < 0",
            0.0,
            tree[("ff", 4)][0] - tree[("lin+ffout", 4)][0],
            0.0,
            "at_most",
        ),
        Check(
            "tree: lin(L=4) / ff(L=4) ≥ 3",
            3.0,
            tree[("lin", 4)][0] / tree[("ff", 4)][0],
            0.0,
            "at_least",
        ),
    ]
    lin_theory = panels["tree"]["theory_results"]["linear"].mse[3]
    checks.append(
        Check(
            "tree: lin(L=4) ≈ non-adaptive linear theory (10%)",
            lin_theory,
            tree[("lin", 4)][0],
            0.1 * lin_theory,
        )
    )
    J = panels["gauss"]["jgauss"][1]
    for name in ("lin", "ff"):
        for L in (1, 2, 3, 4):
            checks.append(
                Check(
                    f"gauss: {name}(L={L}) ≈ J*_Gauss (10%)",
                    J[L - 1],
                    gauss[(name, L)][0],
                    0.1 * J[L - 1],
                )
            )
    greedy = panels["gauss"]["theory_results"]["greedy"]
    for L in (1, 4):
        checks.append(
            Check(
                f"gauss theory: greedy(L={L}) = J*_Gauss (3 MC s.e.)",
                J[L - 1],
                greedy.mse[L - 1],
                3 * greedy.mse_stderr[L - 1],
            )
        )
    checks += [
        Check("probe ff: level-1 accuracy at layer 2 ≥ 0.95", 0.95, acc_ff[1, 0], 0.0, "at_least"),
        Check("probe ff: level-4 accuracy at layer 4 ≥ 0.9", 0.9, acc_ff[3, 3], 0.0, "at_least"),
        Check(
            "probe ff: staircase (first layer reaching 0.9 is non-decreasing in level k)",
            0.0,
            float(np.sum(np.diff(_first_layer(acc_ff, 0.9)) < 0)),
            0.0,
            "at_most",
        ),
    ]
    return checks


def _first_layer(acc: np.ndarray, level: float) -> np.ndarray:
    """Per tree level: the first layer (1-based) reaching accuracy `level` (L + 1 if never)."""
    hit = acc >= level
    return np.where(hit.any(0), hit.argmax(0) + 1, acc.shape[0] + 1)
