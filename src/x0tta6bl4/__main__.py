"""``python -m x0tta6bl4`` runs the command line."""

from __future__ import annotations

from x0tta6bl4.cli import main

main()
