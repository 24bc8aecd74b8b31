"""x0tta6bl4.identity."""
