"""grain pipeline: temporal sampling, crops and flips, labels, determinism, workers."""

import io

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from auvmae_jax import augment, input_pipeline
from auvmae_jax.errors import UserError
from auvmae_jax.input_pipeline import ClipSampler


def _jpeg(frame):
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _record(num_frames=16, size=32, n_aus=3, half=False):
    frames = []
    for i in range(num_frames):
        f = np.zeros((size, size, 3), np.uint8)
        f[..., 0] = 10 * i  # frame index coded in red
        if half:
            f[:, size // 2:, 1] = 255  # right half green
        frames.append(_jpeg(f))
    labels = (np.arange(num_frames * n_aus).reshape(num_frames, n_aus) % 2).astype(np.uint8)
    return {"frames": np.array(frames, dtype=object), "labels": labels,
            "valid": np.ones_like(labels)}


def test_eval_sampling_takes_strided_frames_from_the_start_and_all_labels():
    rec = _record()
    out = ClipSampler(num_frames=4, temporal_stride=2, image_size=16, train=False, with_labels=True)(rec)
    assert out["frames"].shape == (4, 16, 16, 3) and out["frames"].dtype == np.uint8
    np.testing.assert_allclose(out["frames"][:, 8, 8, 0], [0, 20, 40, 60], atol=3)
    # Labels cover every frame of the span (stride 2 x 4 frames = 8 frames), not just the sampled ones.
    np.testing.assert_array_equal(out["labels"], rec["labels"][:8])
    np.testing.assert_array_equal(out["valid"], 1)


def test_labels_past_the_clip_end_are_invalid():
    rec = _record(num_frames=14)
    out = ClipSampler(num_frames=4, temporal_stride=4, image_size=16, train=False, with_labels=True)(rec)
    np.testing.assert_allclose(out["frames"][:, 0, 0, 0], [0, 40, 80, 120], atol=3)
    assert out["labels"].shape == (16, 3)
    np.testing.assert_array_equal(out["valid"][:14], 1)
    np.testing.assert_array_equal(out["valid"][14:], 0)


def test_train_sampling_random_start_crop_and_flip():
    rec = _record(half=True)  # 32 px frames, right half green
    # Frames stored at image_size: the sampler draws the box, the device cuts it (augment).
    sampler = ClipSampler(num_frames=4, temporal_stride=1, image_size=32, train=True,
                          crop_scale=(0.3, 0.6), crop_ratio=(3 / 4, 4 / 3))
    starts, flips, boxes, areas, ratios = set(), set(), set(), [], []
    for seed in range(40):
        out = sampler(rec, np.random.default_rng(seed))
        red = out["frames"][:, 8, 8, 0].astype(int)
        np.testing.assert_allclose(np.diff(red), 10, atol=4)  # consecutive frames
        starts.add(int(round(red[0] / 10)))
        x0, y0, x1, y1 = (float(c) for c in out["crop"])
        flips.add(x0 > x1)  # a mirrored box
        boxes.add((x0, y0, x1, y1))
        w, h = abs(x1 - x0), y1 - y0
        assert 0 <= min(x0, x1) and max(x0, x1) <= 32 and 0 <= y0 < y1 <= 32
        # Width and height are sqrt(area * ratio) and sqrt(area / ratio) rounded to whole pixels.
        assert (w + 0.5) * (h + 0.5) >= 0.3 * 32 * 32 and (w - 0.5) * (h - 0.5) <= 0.6 * 32 * 32, (w, h)
        assert (w + 0.5) / (h - 0.5) >= 3 / 4 and (w - 0.5) / (h + 0.5) <= 4 / 3, (w, h)
        areas.append(w * h / 32 / 32)
        ratios.append(w / h)
        # On the device: output column c samples source x0 + (c + 0.5) (x1 - x0) / 32; green iff >= 16.
        crop = np.asarray(augment.resized_crop(jnp.asarray(out["frames"][None]),
                                               jnp.asarray(out["crop"][None])))
        for c in range(32):
            x = x0 + (c + 0.5) * (x1 - x0) / 32
            if abs(x - 16) > 2:
                assert (crop[0, 0, 16, c, 1] > 128) == (x > 16), (c, x, x0, x1)
    assert len(starts) > 5 and max(starts) <= 12
    assert flips == {True, False} and len(boxes) == 40  # a box of its own per draw, anywhere in the frame
    assert len({min(b[0], b[2]) for b in boxes}) > 5 and len({b[1] for b in boxes}) > 5
    assert min(areas) < 0.4 and max(areas) > 0.5 and min(ratios) < 0.9 and max(ratios) > 1.1
    # flip=False (the demo's fine-tuning: aligned faces): the same crops, never mirrored.
    unflipped = ClipSampler(num_frames=4, temporal_stride=1, image_size=32, train=True,
                            crop_scale=(0.3, 0.6), crop_ratio=(3 / 4, 4 / 3), flip=False)
    assert not any(float(c[0]) > float(c[2]) for c in
                   (unflipped(rec, np.random.default_rng(seed))["crop"] for seed in range(40)))


def test_crop_box_stays_inside_and_respects_scale():
    sampler = ClipSampler(num_frames=1, temporal_stride=1, image_size=8, train=True, crop_scale=(0.25, 0.5))
    rng = np.random.default_rng(0)
    for _ in range(100):
        x0, y0, x1, y1 = sampler._crop_box((64, 48), rng)
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
        assert 0.2 * 64 * 48 <= (x1 - x0) * (y1 - y0) <= 0.55 * 64 * 48


def test_decoded_frames_are_stacked_as_stored():
    y, x = np.mgrid[:24, :40]
    pixels = [np.stack([4 * x + k, 8 * y, 200 - 4 * x - k * 20], -1).astype(np.uint8) for k in range(3)]
    jpegs = []
    for p in pixels:
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
    images = [input_pipeline.decode_jpeg(j) for j in jpegs]  # lazy: decoded when read
    clip = input_pipeline.stack_images(images)
    assert clip.shape == (3, 24, 40, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip, np.stack([np.asarray(Image.open(io.BytesIO(j))) for j in jpegs]))
    assert np.abs(clip.astype(int) - np.stack(pixels)).mean() < 3  # JPEG's loss, not another image


def test_too_short_clip_is_a_clear_error():
    with pytest.raises(UserError, match="clip of 16 frames is shorter than 8 frames at stride 4"):
        ClipSampler(num_frames=8, temporal_stride=4, image_size=16, train=False)(_record())


def test_dataset_is_deterministic_and_workers_give_the_same_batches():
    records = [_record() for _ in range(6)]
    sampler = ClipSampler(num_frames=4, temporal_stride=2, image_size=16, train=True, with_labels=True)

    def batches(seed, workers):
        ds = input_pipeline.make_dataset(records, sampler, batch_size=4, seed=seed, worker_count=workers)
        it = iter(ds)
        return [next(it) for _ in range(3)]

    a, b, c = batches(0, 0), batches(0, 0), batches(1, 0)
    assert a[0]["frames"].shape == (4, 4, 16, 16, 3) and a[0]["labels"].shape == (4, 8, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["frames"], y["frames"])
    assert not all(np.array_equal(x["frames"], y["frames"]) for x, y in zip(a, c))
    for x, y in zip(a, batches(0, 1)):
        np.testing.assert_array_equal(x["frames"], y["frames"])


@pytest.mark.parametrize("workers", [0, 1])
def test_iterator_state_round_trips_through_json(workers):
    import json

    records = [_record() for _ in range(6)]
    sampler = ClipSampler(num_frames=2, temporal_stride=1, image_size=8, train=True)
    it = iter(input_pipeline.make_dataset(records, sampler, batch_size=2, seed=0, worker_count=workers))
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it)["frames"] for _ in range(3)]
    fresh = iter(input_pipeline.make_dataset(records, sampler, batch_size=2, seed=0, worker_count=workers))
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["frames"], want)


def test_reading_ahead_is_bounded_by_read_threads():
    """At most `read_threads` batches are made ahead of the consumer (grain alone buffers 500)."""
    import time

    reads = []

    class Logged(list):
        def __getitem__(self, i):
            reads.append(i)
            return super().__getitem__(i)

    records = Logged(_record() for _ in range(64))
    sampler = ClipSampler(num_frames=2, temporal_stride=1, image_size=8, train=True)
    it = iter(input_pipeline.make_dataset(records, sampler, batch_size=2, seed=0, read_threads=3))
    next(it)
    for _ in range(50):  # the threads read ahead (slowly where other tests share the cores) ...
        if len(reads) > 2:
            break
        time.sleep(0.1)
    time.sleep(0.5)  # ... and would run far ahead in this time if nothing held them
    assert 2 < len(reads) <= (1 + 3) * 2  # the batch taken + 3 ready or in flight, 2 clips each
    next(it)
    time.sleep(0.2)
    assert len(reads) <= (2 + 3) * 2


def test_repeated_sampling_decodes_once_and_cuts_several_views():
    rec = _record(half=True)
    sampler = ClipSampler(num_frames=4, temporal_stride=1, image_size=32, train=True, with_labels=True,
                          repeats=3, crop_scale=(0.3, 0.6))
    out = sampler(rec, np.random.default_rng(2))
    # The frames and labels once, a box per view (the device cuts the views, augment.apply_crops).
    assert out["frames"].shape == (4, 32, 32, 3) and out["labels"].shape == (4, 3)
    assert out["crop"].shape == (3, 4) and len({tuple(c) for c in out["crop"]}) == 3  # own crops
    np.testing.assert_allclose(np.diff(out["frames"][:, 8, 8, 0].astype(int)), 10, atol=4)
    # Frames stored at another size are cropped here: one set per view, identity boxes.
    host = ClipSampler(num_frames=4, temporal_stride=1, image_size=16, train=True, with_labels=True,
                       repeats=3, crop_scale=(0.3, 0.6))(rec, np.random.default_rng(2))
    assert host["frames"].shape == (3, 4, 16, 16, 3) and host["labels"].shape == (4, 3)
    np.testing.assert_array_equal(host["crop"], np.broadcast_to(np.float32([0, 0, 16, 16]), (3, 4)))
    red = host["frames"][:, :, 8, 8, 0].astype(int)  # the frame index, the same in every view
    np.testing.assert_allclose(red, np.broadcast_to(red[0], red.shape), atol=3)
    assert not np.array_equal(host["frames"][0], host["frames"][1])
    # Evaluation ignores repeats; 1 repeat is the plain sampler, draw for draw.
    assert ClipSampler(num_frames=4, temporal_stride=1, image_size=16, train=False,
                       repeats=3)(rec)["frames"].shape == (4, 16, 16, 3)
    one = ClipSampler(num_frames=4, temporal_stride=1, image_size=16, train=True, repeats=1)
    plain = ClipSampler(num_frames=4, temporal_stride=1, image_size=16, train=True)
    np.testing.assert_array_equal(one(rec, np.random.default_rng(5))["frames"],
                                  plain(rec, np.random.default_rng(5))["frames"])


def test_repeated_views_sit_side_by_side_in_a_batch():
    records = []
    for r in range(4):  # record r: blue = 50 * r
        frames = [np.full((8, 8, 3), (10 * i, 0, 50 * r), np.uint8) for i in range(8)]
        records.append({"frames": np.array([_jpeg(f) for f in frames], dtype=object)})
    sampler = ClipSampler(num_frames=2, temporal_stride=1, image_size=8, train=True, repeats=2)
    batch = next(iter(input_pipeline.make_dataset(records, sampler, batch_size=4, seed=0)))
    assert batch["frames"].shape == (2, 2, 8, 8, 3) and batch["crop"].shape == (2, 2, 4)  # 2 clips
    views = augment.apply_crops({k: jnp.asarray(v) for k, v in batch.items()})["frames"]
    assert views.shape == (4, 2, 8, 8, 3)
    blue = np.asarray(views)[:, 0, 4, 4, 2]
    assert abs(blue[0] - blue[1]) <= 3 and abs(blue[2] - blue[3]) <= 3 and abs(blue[0] - blue[2]) > 20
    with pytest.raises(UserError, match="data.repeats=3 does not divide the per-process batch of 4"):
        input_pipeline.make_dataset(records, ClipSampler(num_frames=2, temporal_stride=1, image_size=8,
                                                         train=True, repeats=3), batch_size=4, seed=0)
