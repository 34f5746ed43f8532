"""The random resized crop and flip of training clips, applied on the device.

The input pipeline decodes frames and draws a crop box per clip (torchvision's
sampling rule, `input_pipeline.ClipSampler`); resampling the frames to that box
happens here, inside the jitted step, as two small matmuls per clip. On the
host that resampling cost twice the JPEG decode (PIL, 224 pixels); on an
accelerator it is a fraction of a percent of a ViT step.

A box is `(x0, y0, x1, y1)` in source pixels: output pixel `o` of `S` samples the
source at `x0 + (o + 0.5) (x1 - x0) / S` (pixel centres at `+0.5`, as in PIL and
torchvision), so `x0 > x1` is the mirrored crop. Sampling is PIL's bilinear: a
triangle filter whose support widens by the scale when the box is larger than
the output (antialiasing), weights renormalised at the frame's edges.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resampling_matrix(start: jax.Array, end: jax.Array, size_in: int, size_out: int) -> jax.Array:
    """`[B, size_out, size_in]` bilinear weights mapping `size_in` source pixels to the
    `size_out` output pixels spanning `[start, end)` (`[B]` each; `start > end` mirrors)."""
    step = (end - start) / size_out
    centres = start[:, None] + (jnp.arange(size_out) + 0.5) * step[:, None]
    support = jnp.maximum(jnp.abs(step), 1.0)[:, None, None]
    dist = (jnp.arange(size_in) + 0.5) - centres[..., None]
    w = jnp.maximum(0.0, 1.0 - jnp.abs(dist) / support)
    return w / w.sum(-1, keepdims=True)


def resized_crop(frames: jax.Array, crop: jax.Array) -> jax.Array:
    """uint8 `[B, T, H, W, C]` frames, `[B, 4]` boxes -> float32 `[B, T, H, W, C]` (0..255):
    each clip's box (every frame alike) resampled to the frame size."""
    _, _, h, w, _ = frames.shape
    crop = crop.astype(jnp.float32)
    wy = resampling_matrix(crop[:, 1], crop[:, 3], h, h)
    wx = resampling_matrix(crop[:, 0], crop[:, 2], w, w)
    x = jnp.einsum("boh,bthwc->btowc", wy, frames.astype(jnp.float32))
    return jnp.einsum("bpw,btowc->btopc", wx, x)


def batch_frames(batch: dict) -> jax.Array:
    """A batch's frames as the model sees them: cropped where the batch has `crop`
    (training), as they are otherwise (evaluation, benchmarks without crops)."""
    if "crop" not in batch:
        return batch["frames"]
    return resized_crop(batch["frames"], batch["crop"])
