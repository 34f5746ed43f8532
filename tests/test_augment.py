"""The device-side random resized crop (augment) against hand-computed values and PIL."""

import jax.numpy as jnp
import numpy as np
from PIL import Image

from auvmae_jax import augment
from auvmae_jax.input_pipeline import ClipSampler, decode_jpeg
from data_builders import clips


def _row(values):
    """A 1 x W single-channel frame as a batch of one clip of one frame."""
    return jnp.asarray(values, jnp.uint8).reshape(1, 1, 1, len(values), 1)


def test_twofold_upsampling_of_a_box_by_hand():
    # Box x in [0, 2) of a 4-pixel row, 4 outputs: centres 0.25, 0.75, 1.25, 1.75 against pixel
    # centres 0.5, 1.5, 2.5 -> weights (1), (.75, .25), (.25, .75), (.75, .25 on pixel 2).
    row = _row([0, 100, 200, 250])
    out = augment.resized_crop(row, jnp.asarray([[0, 0, 2, 1]], jnp.float32))
    np.testing.assert_allclose(np.asarray(out).ravel(), [0, 25, 75, 125], atol=1e-4)
    mirrored = augment.resized_crop(row, jnp.asarray([[2, 0, 0, 1]], jnp.float32))
    np.testing.assert_allclose(np.asarray(mirrored).ravel(), [125, 75, 25, 0], atol=1e-4)
    whole = augment.resized_crop(row, jnp.asarray([[0, 0, 4, 1]], jnp.float32))
    np.testing.assert_array_equal(np.asarray(whole).ravel(), [0, 100, 200, 250])  # the identity box


def test_downsampling_widens_the_filter_like_pil():
    # 4 -> 2 pixels: scale 2, support 2: output centre 1 sees pixels at 0.5, 1.5 (weight 3/4
    # each) and 2.5 (1/4): (0 * .75 + 100 * .75 + 200 * .25) / 1.75.
    w = augment.resampling_matrix(jnp.array([0.0]), jnp.array([4.0]), 4, 2)
    np.testing.assert_allclose(np.asarray(w[0, 0]), np.array([0.75, 0.75, 0.25, 0]) / 1.75, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1, rtol=1e-6)


def test_matches_pil_resize_with_a_box_up_to_its_rounding():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 48)
    image = (ramp[:, None, None] * 0.5 + ramp[None, :, None] * 0.5 + rng.normal(0, 25, (48, 48, 3)))
    image = image.clip(0, 255).astype(np.uint8)
    boxes = [(5, 7, 30, 45), (0, 0, 48, 48), (10, 2, 47, 39), (40, 3, 8, 35)]  # the last mirrored
    frames = jnp.asarray(np.stack([image[None]] * len(boxes)))
    out = np.asarray(augment.resized_crop(frames, jnp.asarray(boxes, jnp.float32)))[:, 0]
    for got, (x0, y0, x1, y1) in zip(out, boxes):
        box = (min(x0, x1), y0, max(x0, x1), y1)
        want = np.asarray(Image.fromarray(image).resize((48, 48), Image.BILINEAR, box=box)).astype(float)
        want = want[:, ::-1] if x0 > x1 else want
        assert np.abs(got - want).max() <= 1.25 and np.abs(got - want).mean() < 0.5


def test_sampler_leaves_frames_at_image_size_to_the_device_crop():
    """Stored at image_size: the sampler hands over the decoded frames and a box; the device's crop
    of them is the crop the sampler makes on the host for frames stored at another size."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
    frames = [np.array(Image.fromarray(base).resize((32, 32), Image.BICUBIC)) for _ in range(4)]
    frames[0][:, 16:, 1] = 255
    record = {"frames": np.array([clips.encode_jpeg(f, 95) for f in frames], dtype=object)}
    kw = dict(num_frames=4, temporal_stride=1, train=True, crop_scale=(0.3, 0.6))
    device = ClipSampler(image_size=32, **kw)
    decoded = np.stack([np.asarray(decode_jpeg(b)) for b in record["frames"]])
    flips = set()
    for seed in range(12):
        out = device(record, np.random.default_rng(seed))
        np.testing.assert_array_equal(out["frames"], decoded)  # uncropped
        x0, y0, x1, y1 = out["crop"]
        flips.add(bool(x0 > x1))
        assert out["crop"].dtype == np.float32 and 0 <= min(x0, x1) < max(x0, x1) <= 32 and 0 <= y0 < y1 <= 32
        area = abs(x1 - x0) * (y1 - y0)
        assert 0.25 * 32 * 32 <= area <= 0.65 * 32 * 32
        seen = np.asarray(augment.apply_crops({k: jnp.asarray(v)[None] for k, v in out.items()})["frames"])[0]
        box = (min(x0, x1), y0, max(x0, x1), y1)
        host = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.BILINEAR, box=box))
                         for f in decoded])
        host = host[:, :, ::-1] if x0 > x1 else host
        assert np.abs(seen - host).max() <= 1.25
    assert flips == {True, False}
    # Another stored size: cropped on the host, with the identity box for the device.
    out = ClipSampler(image_size=16, **kw)(record, np.random.default_rng(0))
    assert out["frames"].shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(out["crop"], [0, 0, 16, 16])
    seen = augment.apply_crops({k: jnp.asarray(v)[None] for k, v in out.items()})["frames"]
    np.testing.assert_array_equal(np.asarray(seen)[0], out["frames"])
    # Evaluation: no box, the frames as stored.
    ev = ClipSampler(num_frames=4, temporal_stride=1, image_size=32, train=False)(record)
    assert set(ev) == {"frames"}
    np.testing.assert_array_equal(ev["frames"], decoded)


def test_views_of_a_clip_are_cut_from_frames_sent_once():
    """data.repeats = 3: the batch holds each clip's frames once and 3 boxes; the device's views
    are the clip cropped to each box, side by side, with the labels repeated per view."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 2, 16, 16, 3)).astype(np.uint8)  # 2 clips of 2 frames
    crop = np.asarray([[(0, 0, 16, 16), (12, 2, 3, 14), (4, 4, 12, 12)],
                       [(1, 0, 9, 16), (0, 3, 13, 11), (16, 0, 0, 16)]], np.float32)
    labels = np.arange(2 * 4 * 2, dtype=np.uint8).reshape(2, 4, 2)
    out = augment.apply_crops({"frames": jnp.asarray(frames), "crop": jnp.asarray(crop),
                               "labels": jnp.asarray(labels)})
    assert out["frames"].shape == (6, 2, 16, 16, 3) and out["labels"].shape == (6, 4, 2)
    for i in range(6):
        clip, view = divmod(i, 3)
        one = augment.resized_crop(jnp.asarray(frames[clip:clip + 1]), jnp.asarray(crop[clip, view:view + 1]))
        np.testing.assert_allclose(np.asarray(out["frames"][i]), np.asarray(one[0]), atol=1e-3)
        np.testing.assert_array_equal(np.asarray(out["labels"][i]), labels[clip])
    np.testing.assert_array_equal(np.asarray(out["frames"][0]), frames[0])  # the identity box
    np.testing.assert_allclose(np.asarray(out["frames"][5]), frames[1][:, :, ::-1], atol=1e-3)  # mirrored
    # Frames cropped on the host come per view ([N, V, T, H, W, C], identity boxes): kept as they are.
    per_view = np.stack([frames] * 3, axis=1)
    identity = np.broadcast_to(np.float32([0, 0, 16, 16]), (2, 3, 4))
    out = augment.apply_crops({"frames": jnp.asarray(per_view), "crop": jnp.asarray(identity)})
    np.testing.assert_array_equal(np.asarray(out["frames"]), per_view.reshape(6, 2, 16, 16, 3))
