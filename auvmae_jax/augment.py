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
    """`[..., size_out, size_in]` bilinear weights mapping `size_in` source pixels to the
    `size_out` output pixels spanning `[start, end)` (`[...]` each; `start > end` mirrors)."""
    step = (end - start) / size_out
    centres = start[..., None] + (jnp.arange(size_out) + 0.5) * step[..., None]
    support = jnp.maximum(jnp.abs(step), 1.0)[..., None, None]
    dist = (jnp.arange(size_in) + 0.5) - centres[..., None]
    w = jnp.maximum(0.0, 1.0 - jnp.abs(dist) / support)
    return w / w.sum(-1, keepdims=True)


def resized_crop(frames: jax.Array, crop: jax.Array) -> jax.Array:
    """uint8 `[B, T, H, W, C]` frames, `[B, 4]` boxes -> float32 `[B, T, H, W, C]` (0..255):
    each clip's box (every frame alike) resampled to the frame size. With `[B, V, 4]`
    boxes, `V` views of each clip: `[B, V, T, H, W, C]`, the frames read once."""
    if crop.ndim == 2:
        return resized_crop(frames, crop[:, None])[:, 0]
    _, _, h, w, _ = frames.shape
    crop = crop.astype(jnp.float32)
    wy = resampling_matrix(crop[..., 1], crop[..., 3], h, h)  # [B, V, H, H]
    wx = resampling_matrix(crop[..., 0], crop[..., 2], w, w)
    x = jnp.einsum("bvoh,bthwc->bvtowc", wy, frames.astype(jnp.float32))
    return jnp.einsum("bvpw,bvtowc->bvtopc", wx, x)


def apply_crops(batch: dict) -> dict:
    """A batch as the model sees it: its frames cropped where it has crop boxes (training),
    as it is otherwise (evaluation, benchmarks without crops).

    Boxes `[B, 4]`: one view per clip. Boxes `[N, V, 4]` (`data.repeats = V`): `V` views of
    each of `N` clips whose frames came once, `[N, T, H, W, C]` (or one set per view,
    `[N, V, T, H, W, C]`, where the host cropped them); the result has `B = N V` examples,
    a clip's views side by side, every other array (labels, valid) repeated per view.
    """
    if "crop" not in batch:
        return batch
    frames, crop = batch["frames"], batch["crop"]
    if crop.ndim == 2:
        return {**batch, "frames": resized_crop(frames, crop)}
    n, v = crop.shape[:2]
    if frames.ndim == 6:  # already cropped on the host: the identity boxes
        out = resized_crop(frames.reshape(n * v, *frames.shape[2:]), crop.reshape(n * v, 4))
    else:
        out = resized_crop(frames, crop).reshape(n * v, *frames.shape[1:])
    rest = {k: jnp.repeat(x, v, axis=0) for k, x in batch.items() if k not in ("frames", "crop")}
    return {**rest, "frames": out}
