"""One module per reproduced result: run(quick, out_dir) -> Section (checks + figures)."""

from .common import Check, Section

__all__ = ["Check", "Section"]
