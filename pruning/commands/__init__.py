"""CLI subcommands, one module each (see pruning.cli)."""
