"""Tube masking (SPEC §1): one spatial mask per clip, repeated at every temporal index."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_masked(num_spatial: int, mask_ratio: float) -> int:
    """Masked spatial positions per clip: exactly `round(ratio * num_spatial)`."""
    return int(round(mask_ratio * num_spatial))


def tube_mask(key: jax.Array, batch_size: int, num_spatial: int,
              mask_ratio: float) -> tuple[jax.Array, jax.Array]:
    """Random tube masks as sorted spatial indices.

    Returns `visible [B, Sv]` and `masked [B, Sm]` (int32, each row ascending),
    `Sm = round(ratio * S)`, `Sv = S - Sm`; every clip draws its own mask.
    """
    n_mask = num_masked(num_spatial, mask_ratio)
    noise = jax.random.uniform(key, (batch_size, num_spatial))
    order = jnp.argsort(noise, axis=1).astype(jnp.int32)
    visible = jnp.sort(order[:, : num_spatial - n_mask], axis=1)
    masked = jnp.sort(order[:, num_spatial - n_mask:], axis=1)
    return visible, masked


def tube_token_ids(spatial: jax.Array, num_temporal: int, num_spatial: int) -> jax.Array:
    """Spatial indices `[B, K]` -> token indices `[B, Tt*K]` in ascending (t, s) order."""
    offsets = jnp.arange(num_temporal, dtype=spatial.dtype)[None, :, None] * num_spatial
    return (offsets + spatial[:, None, :]).reshape(spatial.shape[0], -1)


def gather_tokens(tokens: jax.Array, ids: jax.Array) -> jax.Array:
    """`tokens [B, L, D]`, `ids [B, K]` -> `[B, K, D]`."""
    return jnp.take_along_axis(tokens, ids[:, :, None], axis=1)


def token_mask(masked: jax.Array, num_temporal: int, num_spatial: int) -> jax.Array:
    """Boolean `[B, Tt*S]`, True where the token is masked (VideoMAE's `bool_masked_pos`)."""
    spatial = jnp.zeros((masked.shape[0], num_spatial), bool)
    spatial = spatial.at[jnp.arange(masked.shape[0])[:, None], masked].set(True)
    return jnp.tile(spatial, (1, num_temporal))
