"""`python -m auvmae_jax COMMAND ...` = `auvmae COMMAND ...`."""

from auvmae_jax.cli import entry_point

entry_point()
