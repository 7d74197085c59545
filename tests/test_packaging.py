"""Packaging and citation: one version string; the citation files and the API reference agree with
the package; (slow) the sdist and wheel build, carry the C kernel source, install into a fresh
venv and run `tokendyn reproduce --quick --section engine` there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import tokendyn as td

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = os.environ.get("TORCH_PIN", "torch==2.13.0")


def test_citation_files_carry_the_package_version() -> None:
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: (\S+)$", cff, re.M).group(1) == td.__version__
    bibtex = re.search(r"```bibtex\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert re.search(r"version\s*=\s*\{([^}]*)\}", bibtex).group(1) == td.__version__
    title = re.search(r'^title: "(.*)"$', cff, re.M).group(1)
    assert f"title   = {{{title}}}" in bibtex


def test_api_reference_documents_every_public_name() -> None:
    pages = "".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    documented = set(re.findall(r"^::: tokendyn\.(\w+)$", pages, re.M))
    assert documented == set(td.__all__) - {"__version__"}


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = dist.glob("tokendyn-*.whl")
    (sdist,) = dist.glob("tokendyn-*.tar.gz")
    assert wheel.name.startswith(f"tokendyn-{td.__version__}-")
    assert "tokendyn/engine/kernels/_fused.c" in zipfile.ZipFile(wheel).namelist()
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("src/tokendyn/engine/kernels/_fused.c") for n in tar.getnames())
    # the installed wheel, not this checkout: with PYTHONPATH=src pip would find the source
    # tree's egg-info and skip the install
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TOKENDYN_CACHE"] = str(tmp_path / "cache")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH_PIN], check=True, env=env)  # the CPU build first, as `make install`
    subprocess.run([*pip, str(wheel)], check=True, env=env)
    result = subprocess.run(
        [str(venv / "bin" / "tokendyn"), "reproduce", "--quick", "--section", "engine",
         "--out", str(tmp_path / "report")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "report" / "index.html").exists()
    if shutil.which(os.environ.get("CC", "cc")):  # the C kernel was built at first use
        assert list((tmp_path / "cache").glob("fused-*.so"))
