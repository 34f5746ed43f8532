"""Pre-training target and loss (SPEC §1, eq. 1). Fine-tuning losses join in issue 3."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from auvmae_jax.models import patchify

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_frames(frames: jax.Array, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """`[..., 3]` uint8 (or float, 0..255) -> (`[0, 1]` float32 frames, ImageNet-normalised
    frames in `dtype`)."""
    x01 = frames.astype(jnp.float32) / 255.0
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return x01, ((x01 - mean) / std).astype(dtype)


def tubelet_stats(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and unbiased std of tubelets `[..., P*3]` -> two `[..., 1, 3]` arrays."""
    x = tokens.reshape(*tokens.shape[:-1], tokens.shape[-1] // 3, 3)
    return x.mean(axis=-2, keepdims=True), jnp.sqrt(x.var(axis=-2, keepdims=True, ddof=1))


def normalize_tubelets(tokens: jax.Array) -> jax.Array:
    """`(x - mean) / (std + 1e-6)` per tubelet and channel (VideoMAE's norm_pix_loss)."""
    mean, std = tubelet_stats(tokens)
    x = tokens.reshape(*tokens.shape[:-1], tokens.shape[-1] // 3, 3)
    return ((x - mean) / (std + 1e-6)).reshape(tokens.shape)


def mae_targets(video01: jax.Array, tubelet: int, patch: int, normalize: bool = True,
                token_ids: jax.Array | None = None) -> jax.Array:
    """Reconstruction targets `[B, L, kt*p*p*3]` from `[0, 1]` frames `[B, T, H, W, 3]`.

    Values are ordered (t, h, w, c) inside a tubelet. With `normalize`, each tubelet
    is standardised per channel over its kt*p*p values with the unbiased variance.
    `token_ids [B, K]`: only those tubelets, `[B, K, kt*p*p*3]` (the masked ones in
    pre-training; each is normalised on its own, so nothing else is computed).
    """
    x = patchify(video01, tubelet, patch)  # [B, L, P, C]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    if token_ids is not None:
        x = jnp.take_along_axis(x, token_ids[:, :, None], axis=1, mode="promise_in_bounds")
    x = x.astype(jnp.float32)
    return normalize_tubelets(x) if normalize else x


def reconstruction_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over masked tokens and pixel values (eq. 1).

    `pred`, `target`: `[B, Tt*Sm, P]`. With tube masking every temporal index has
    the same number of masked tokens, so the per-frame mean then the mean over
    frames equals this plain mean.
    """
    sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    return jnp.sum(sq) / max(sq.size, 1)  # 0 when nothing is masked


def weighted_bce(logits: jax.Array, labels: jax.Array, valid: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted binary cross-entropy (eq. 2, SPEC §2.1).

    `logits`, `labels`, `valid`: `[..., N]`; `weights`: `[N]`. The mean over frames
    with any valid label of `sum_i valid_i * w_i * BCE(logit_i, y_i)`, computed from
    logits (`log1p(exp(-|x|))` form, no log of a sigmoid).
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    valid = valid.astype(jnp.float32)
    bce = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    per_frame = jnp.sum(valid * weights * bce, axis=-1)
    frames = jnp.sum(jnp.any(valid > 0, axis=-1))
    return jnp.sum(per_frame) / jnp.maximum(frames, 1)
