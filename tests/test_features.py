"""`features`: sliding windows, per-frame and per-clip encoder features of videos and .npy frames."""

import csv

import jax.numpy as jnp
import numpy as np
import pytest

from auvmae_jax import cli, features, losses, video_io
from auvmae_jax.errors import UserError
from auvmae_jax.models import Encoder
from tests.test_faces import face_video_frames

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("n,w,hop", [(5, 8, 4), (8, 8, 4), (21, 8, 4), (20, 8, 8), (100, 16, 5)])
def test_windows_cover_every_frame_and_end_at_the_last(n, w, hop):
    starts = features.window_starts(n, w, hop)
    covered = np.zeros(n, int)
    for s in starts:
        covered[s:s + w] += 1
    assert covered.min() >= 1 and starts == sorted(set(starts))
    assert starts[-1] == max(n - w, 0) and all(b - a <= hop for a, b in zip(starts, starts[1:]))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random transformers VideoMAEModel (4 frames of 32 px, patch 8), converted."""
    from auvmae_jax import convert

    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2,
                                      hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=128)
    root = tmp_path_factory.mktemp("conv")
    transformers.VideoMAEModel(cfg).save_pretrained(root / "hf")
    convert.convert(str(root / "hf"), str(root / "out"))
    return str(root / "out")


def _direct(ckpt, frames: np.ndarray, start: int) -> np.ndarray:
    """Per-temporal-token spatial means of the encoder on frames[start:start+window]."""
    x = losses.normalize_frames(jnp.asarray(frames[start:start + ckpt.window][None]))[1]
    tokens = np.asarray(Encoder(ckpt.vit).apply({"params": ckpt.params["encoder"]}, x))[0]
    return tokens.reshape(ckpt.window // 2, -1, tokens.shape[-1]).mean(axis=1)


def test_npy_frames_per_frame_and_per_clip(converted, tmp_path):
    ckpt = features.load_checkpoint(converted)
    assert (ckpt.task, ckpt.window, ckpt.image_size, ckpt.aus) == ("converted", 4, 32, None)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    out = features.extract_features(ckpt, str(tmp_path / "frames.npy"), str(tmp_path / "f.npy"), hop=2,
                                    progress=False)
    assert out.shape == (10, 32) and np.load(tmp_path / "f.npy").shape == (10, 32)
    # windows start at 0, 2, 4, 6: frame 3 is in the clips at 0 and 2, as token 1 of the first
    # and token 0 of the second
    a, b = _direct(ckpt, frames, 0), _direct(ckpt, frames, 2)
    np.testing.assert_allclose(out[0], a[0], atol=1e-5)
    np.testing.assert_allclose(out[3], (a[1] + b[0]) / 2, atol=1e-5)
    clips = features.extract_features(ckpt, str(tmp_path / "frames.npy"), str(tmp_path / "c.npy"),
                                      pool="clip", hop=2, progress=False)
    assert clips.shape == (4, 32)
    np.testing.assert_allclose(clips[1], b.mean(axis=0), atol=1e-5)
    with open(tmp_path / "c_clips.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["clip", "start_frame", "end_frame", "start_time"] and rows[2][:3] == ["1", "2", "5"]


def test_video_with_faces_through_the_cli(converted, tmp_path):
    frames, _ = face_video_frames(9, face=128, seed=4)
    video = tmp_path / "v.mp4"
    video_io.write_video(video, frames, fps=25)
    out = tmp_path / "feats.npy"
    argv = ["auvmae", "features", f"--checkpoint={converted}", f"--video={video}", f"--output={out}"]
    assert cli.main(argv) == 0
    feats = np.load(out)
    assert feats.shape == (9, 32) and np.isfinite(feats).all()
    assert np.abs(feats[0] - feats[8]).max() > 1e-4  # frames differ, features do
    with open(tmp_path / "feats_frames.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "timestamp", "face_detected"] and len(rows) == 10
    assert [r[1] for r in rows[1:4]] == ["0.000", "0.040", "0.080"] and {r[2] for r in rows[1:]} == {"1"}


def test_frames_without_a_face_are_flagged(converted, tmp_path):
    frames, _ = face_video_frames(9, face=128, seed=4)
    frames[3:6] = 96  # the face leaves for three frames
    video = tmp_path / "v.mp4"
    video_io.write_video(video, frames, fps=25)
    ckpt = features.load_checkpoint(converted)
    feats = features.extract_features(ckpt, str(video), str(tmp_path / "f.npy"), progress=False)
    assert feats.shape == (9, 32) and np.isfinite(feats).all()
    with open(tmp_path / "f_frames.csv") as f:
        assert [r[2] for r in list(csv.reader(f))[1:]] == list("111000111")
    features.extract_features(ckpt, str(video), str(tmp_path / "g.npy"), detect=False, progress=False)
    with open(tmp_path / "g_frames.csv") as f:
        assert {r[2] for r in list(csv.reader(f))[1:]} == {""}


def test_bad_inputs(converted, tmp_path):
    ckpt = features.load_checkpoint(converted)
    np.save(tmp_path / "gray.npy", np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(UserError, match=r"gray\.npy: expected uint8 frames \[T, H, W, 3\]"):
        features.extract_features(ckpt, str(tmp_path / "gray.npy"), str(tmp_path / "o.npy"))
    with pytest.raises(UserError, match="--pool=mean"):
        features.extract_features(ckpt, str(tmp_path / "gray.npy"), str(tmp_path / "o.npy"), pool="mean")
    with pytest.raises(UserError, match="no config.json"):
        features.load_checkpoint(str(tmp_path))
    from auvmae_jax import predict

    with pytest.raises(UserError, match="converted checkpoint: predict needs a fine-tuned AU detector"):
        predict.predict_video(ckpt, "any.mp4", str(tmp_path / "o.csv"))


def test_hop_longer_than_the_clip(converted, tmp_path):
    # Per-frame features need every frame in a clip: a 4-frame clip with hop 5 would leave frame 4 out.
    ckpt = features.load_checkpoint(converted)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (13, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    with pytest.raises(UserError, match=r"^--hop=5: longer than the 4-frame clip of .*out, so the frames "
                                        r"between clips would get no output; use --hop=4 or less$"):
        features.extract_features(ckpt, str(tmp_path / "frames.npy"), str(tmp_path / "f.npy"), hop=5,
                                  progress=False)
    assert not (tmp_path / "f.npy").exists()
    # Per-clip features may skip frames: clips at 0, 5 and the one ending at the last frame (9).
    clips = features.extract_features(ckpt, str(tmp_path / "frames.npy"), str(tmp_path / "c.npy"),
                                      pool="clip", hop=5, progress=False)
    assert clips.shape == (3, 32)
    np.testing.assert_allclose(clips[1], _direct(ckpt, frames, 5).mean(axis=0), atol=1e-5)
    with open(tmp_path / "c_clips.csv") as f:
        assert [r[1:3] for r in list(csv.reader(f))[1:]] == [["0", "3"], ["5", "8"], ["9", "12"]]
    # A hop of exactly one clip covers every frame once.
    out = features.extract_features(ckpt, str(tmp_path / "frames.npy"), str(tmp_path / "f.npy"), hop=4,
                                    progress=False)
    np.testing.assert_allclose(out[4:6], _direct(ckpt, frames, 4)[:1].repeat(2, axis=0), atol=1e-5)


def test_boxes_are_smoothed_within_each_frame_size(tmp_path):
    # A stream that changes size mid-way (a recorded video call, say): the boxes of the frames
    # beside the change are not averaged with boxes in the other size's pixels.
    import av

    from auvmae_jax import faces

    small, small_truth = face_video_frames(10, face=96, height=240, width=320, seed=5)
    large, large_truth = face_video_frames(10, face=192, height=480, width=640, seed=5)
    parts = []
    for name, frames in (("a", small), ("b", large)):
        with av.open(str(tmp_path / f"{name}.h264"), mode="w", format="h264") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            for rgb in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            container.mux(stream.encode())
        parts.append((tmp_path / f"{name}.h264").read_bytes())
    video = tmp_path / "changes.h264"
    video.write_bytes(b"".join(parts))  # Annex B streams concatenate
    track = features.track_faces(str(video), faces.FaceDetector("opencv"), progress=False)
    assert len(track.boxes) == 20 and all(track.found)
    for box, (x, y, w, h) in zip(track.boxes, small_truth + large_truth):
        assert abs(box.x + box.w / 2 - (x + w / 2)) < 0.15 * w
        assert abs(box.y + box.h / 2 - (y + h / 2)) < 0.15 * h
