"""One module per reproduced result: run(quick, out_dir) -> Section (checks + figures)."""

from tokendyn.studies.common import Check, Section

__all__ = ["Check", "Section"]
