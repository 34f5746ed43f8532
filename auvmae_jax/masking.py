"""Tube masking (SPEC §1): one spatial mask per clip, repeated at every temporal index;
and, optionally, VideoMAE V2's running-cell masks for the decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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
    return jnp.take_along_axis(tokens, ids[:, :, None], axis=1, mode="promise_in_bounds")


def token_mask(masked: jax.Array, num_temporal: int, num_spatial: int) -> jax.Array:
    """Boolean `[B, Tt*S]`, True where the token is masked (VideoMAE's `bool_masked_pos`)."""
    spatial = jnp.zeros((masked.shape[0], num_spatial), bool)
    spatial = spatial.at[jnp.arange(masked.shape[0])[:, None], masked].set(True)
    return jnp.tile(spatial, (1, num_temporal))


def running_cell_tokens(grid: tuple[int, int, int], ratio: float) -> np.ndarray:
    """VideoMAE V2's running-cell decoder masks: `[4, Tt*K]` token ids (ascending) that the
    decoder reconstructs, one row per phase of the cell.

    Every 2x2 cell of spatial positions drops `m = 4 * ratio` of its 4 positions and keeps
    the others; the dropped ones move by one place in the cell (in row-major order) at each
    temporal index, so over 4 temporal indices every position is reconstructed. Each frame
    keeps exactly `K = (1 - ratio) * hp * wp` positions, whatever the encoder saw.
    """
    tt, hp, wp = grid
    m = 4 * ratio
    if m not in (1, 2, 3):
        raise ValueError(f"a running cell drops 1, 2 or 3 of its 4 positions: ratio 0.25, 0.5 or 0.75, "
                         f"got {ratio}")
    if hp % 2 or wp % 2:
        raise ValueError(f"running cells of 2x2 positions need an even grid of patches, got {hp}x{wp}")
    y, x = np.divmod(np.arange(hp * wp), wp)
    place = (y % 2) * 2 + x % 2  # each position's place in its cell
    rows = []
    for phase in range(4):  # as V2's generator: the cell advances once before its first frame
        ptr = phase + 1 + np.arange(tt)[:, None]
        keep = (place[None, :] + ptr) % 4 >= m  # [Tt, S]: the cell's first m places are dropped
        rows.append(np.nonzero(keep.reshape(-1))[0])
    return np.stack(rows).astype(np.int32)


def decoder_queries(key: jax.Array, batch_size: int, grid: tuple[int, int, int],
                    ratio: float) -> jax.Array:
    """Token ids `[B, Tt*K]` each clip's decoder reconstructs: a running-cell mask
    (`running_cell_tokens`) of a random phase per clip."""
    table = jnp.asarray(running_cell_tokens(grid, ratio))
    return table[jax.random.randint(key, (batch_size,), 0, 4)]
