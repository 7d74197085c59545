"""`python -m tokendyn …`, e.g. under `torchrun --nproc-per-node K -m -- tokendyn simulate …`."""

from tokendyn.cli import app

app()
