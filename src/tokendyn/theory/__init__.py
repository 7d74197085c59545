"""Mean-field objects: the Gaussian closure of the Transformer PDE and its solvers."""

from tokendyn.theory.closure_solver import (
    AuthorsRun,
    ClosureSolution,
    VIClosedForm,
    authors_scheme,
    psd_projection,
    solve_closure,
)
from tokendyn.theory.gaussian import (
    ClosureHead,
    GaussianClosure,
    check_variant,
    closure_rhs,
    gaussian_velocity,
    make_closure,
    psd_sqrt,
)

__all__ = [
    "AuthorsRun",
    "ClosureHead",
    "ClosureSolution",
    "GaussianClosure",
    "VIClosedForm",
    "authors_scheme",
    "check_variant",
    "closure_rhs",
    "gaussian_velocity",
    "make_closure",
    "psd_projection",
    "psd_sqrt",
    "solve_closure",
]
