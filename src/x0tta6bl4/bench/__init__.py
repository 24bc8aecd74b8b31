"""Benchmarks run by ``x0tta6bl4 bench``; each reports ratios against an in-run baseline."""
