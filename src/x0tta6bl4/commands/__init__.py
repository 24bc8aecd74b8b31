"""One module per ``x0tta6bl4`` subcommand."""
