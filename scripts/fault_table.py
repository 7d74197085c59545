"""The fault table of issue 15: generated inputs for every command family, run in-process, each
outcome counted (tried / clean one-line error / traceback / accepted though invalid / hang).

    PYTHONPATH=src python scripts/fault_table.py --budget 1000 [--seconds 10] [--show 3]

Inputs come from the strategies in tests/cli/fuzz_cases.py (the default suite runs a smaller
budget of the same ones in tests/cli/test_fuzz.py); the budget is shared out over the families in
proportion to FAMILY_SHARE. Damaged stores are counted by running tests/app/test_store_safety.py
(every corruption kind × resume/plot/export/animate): add --stores.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cli.fuzz_cases import FAILURES, FAMILIES, OUTCOMES, judge  # noqa: E402

from tokendyn.app.config import make_config  # noqa: E402
from tokendyn.app.run import run_simulation  # noqa: E402

# share of the budget per family (sweeps start a Dask cluster: few of them)
FAMILY_SHARE = {
    "simulate flags": 0.40,
    "simulate TOML": 0.25,
    "closure": 0.08,
    "dmft": 0.10,
    "icl theory/baselines": 0.05,
    "icl train": 0.04,
    "sweep": 0.02,
    "readers": 0.06,
}


def run_family(name: str, budget: int, seconds: float, store: Path) -> list[tuple[str, str]]:
    """(outcome, command) for `budget` generated cases of family `name`."""
    seen: list[tuple[str, str]] = []

    @settings(max_examples=budget, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=FAMILIES[name])
    def one(case):
        with tempfile.TemporaryDirectory() as tmp:
            outcome, output = judge(case, Path(tmp), seconds, store)
        seen.append((outcome, case.describe() + ("\n  → " + output[:300] if output else "")))

    one()
    return seen


def store_rows() -> tuple[int, int, int]:
    """(tried, refused in one line, other) from a run of the damaged-store tests (every corruption
    kind × resume/plot/export/animate)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "tests/app/test_store_safety.py", "-k", "damaged_store"]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", out))
    failed = sum(int(n) for n in re.findall(r"(\d+) failed", out))
    return passed + failed, passed, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="deadline per input")
    parser.add_argument("--show", type=int, default=3, help="failures shown per family")
    parser.add_argument("--stores", action="store_true", help="also run the damaged-store tests")
    args = parser.parse_args()
    rows = {}
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "run.zarr"
        run_simulation(make_config(n=4, d=2, t_end=0.2, dt=0.1), store)
        for name, share in FAMILY_SHARE.items():
            seconds = args.seconds * (6 if name == "sweep" else 1)  # a Dask cluster starts
            seen = run_family(name, max(1, round(args.budget * share)), seconds, store)
            rows[name] = collections.Counter(outcome for outcome, _ in seen)
            failures += [(name, text) for o, text in seen if o in FAILURES][: args.show]
    print("| family | tried | accepted (valid) | clean one-line error | traceback "
          "| accepted though invalid | refused though valid | hang |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    total: collections.Counter = collections.Counter()
    for name, counts in rows.items():
        total += counts
        cells = " | ".join(str(counts[o]) for o in OUTCOMES)
        print(f"| {name} | {sum(counts.values())} | {cells} |")
    print(
        f"| **all** | {sum(total.values())} | " + " | ".join(str(total[o]) for o in OUTCOMES) + " |"
    )
    if args.stores:
        tried, clean, other = store_rows()
        print(f"| damaged stores × resume/plot/export/animate (test_store_safety.py) | {tried} "
              f"| 0 | {clean} | {other} | 0 | 0 | 0 |")  # fmt: skip
    for name, text in failures:
        print(f"\n[{name}] {text}")


if __name__ == "__main__":
    main()
