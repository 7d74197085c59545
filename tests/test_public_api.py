"""The public API: every name in tokendyn.__all__ resolves, is documented, imports cheaply."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tokendyn as td


@pytest.mark.parametrize("name", [n for n in td.__all__ if n != "__version__"])
def test_every_public_name_resolves_and_is_documented(name):
    value = getattr(td, name)
    assert value is not None
    if callable(value) or hasattr(value, "__file__"):
        assert (value.__doc__ or "").strip(), f"td.{name} has no docstring"


def test_public_names_are_the_objects_not_their_modules():
    """`td.simulate` is the function even though its module is also called `simulate`."""
    import types

    modules = {n for n in td.__all__ if isinstance(getattr(td, n), types.ModuleType)}
    assert modules == td._SUBPACKAGES
    assert td.simulate.__module__ == "tokendyn.app.simulate"


def test_all_and_the_lazy_table_agree():
    assert set(td.__all__) == {"__version__", *td._PUBLIC}


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        td.nope  # noqa: B018


def test_import_is_lazy():
    """`import tokendyn` alone loads neither torch nor xarray nor matplotlib."""
    code = (
        "import sys, tokendyn; "
        "print(sorted(m for m in ('torch', 'xarray', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_tokendyn_keeps_the_matplotlib_backend():
    """No library module switches the caller's plotting backend at import."""
    code = (
        "import matplotlib; matplotlib.use('svg'); "
        "import tokendyn.viz.plot, tokendyn.viz.animate, tokendyn.viz.dmft, tokendyn.viz.icl; "
        "import tokendyn.studies.report; print(matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
