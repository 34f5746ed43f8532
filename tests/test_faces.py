"""Face detection on faces drawn by the synthetic generator; gap filling, smoothing, crops."""

import numpy as np
import pytest

from auvmae_jax import faces
from auvmae_jax.errors import UserError
from auvmae_jax.faces import Box


def face_video_frames(num_frames: int, face: int = 128, height: int = 240, width: int = 320,
                      seed: int = 0, drift: int = 2) -> tuple[np.ndarray, list[Box]]:
    """Synthetic-generator faces (`face` px) pasted on a grey canvas, drifting right.

    Returns frames uint8 `[T, height, width, 3]` and the pasted squares (true boxes).
    """
    from data_builders.synthetic_faces import render
    from data_builders.synthetic_faces.timeline import sample_au_intensities

    rng = np.random.default_rng(seed)
    faces_px = render.render_frames(render.sample_identity(rng), sample_au_intensities(rng, num_frames),
                                    face, rng)
    frames = np.full((num_frames, height, width, 3), 96, np.uint8)
    boxes = []
    for t in range(num_frames):
        x, y = 40 + drift * t, (height - face) // 2
        frames[t, y:y + face, x:x + face] = faces_px[t]
        boxes.append(Box(x, y, face, face))
    return frames, boxes


def test_opencv_finds_synthetic_faces_where_they_are():
    frames, truth = face_video_frames(6, seed=3)
    det = faces.FaceDetector("opencv")
    for rgb, (x, y, w, h) in zip(frames, truth):
        box = det.detect(rgb)
        assert box is not None
        cx, cy = box.x + box.w / 2, box.y + box.h / 2
        assert abs(cx - (x + w / 2)) < 0.15 * w and abs(cy - (y + h / 2)) < 0.2 * h
        assert 0.5 * w < box.w < 1.1 * w  # the face inside the pasted square, not the canvas


def test_no_face_in_a_flat_or_noisy_frame():
    det = faces.FaceDetector()
    assert det.detect(np.full((120, 160, 3), 128, np.uint8)) is None
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    assert det.detect(noise) is None


def test_largest_face_wins_and_big_frames_are_shrunk():
    small, _ = face_video_frames(1, face=96, seed=1)
    big, _ = face_video_frames(1, face=192, seed=2, height=480, width=960)
    canvas = np.full((480, 1400, 3), 96, np.uint8)
    canvas[:240, 1000:1320] = small[0]
    canvas[:, :960] = big[0]
    box = faces.FaceDetector(max_side=700).detect(canvas)  # detection at half size
    assert box is not None and box.x + box.w < 960 and box.w > 120


def test_mtcnn_is_a_clear_error_without_its_package():
    try:
        import facenet_pytorch  # noqa: F401
        pytest.skip("facenet_pytorch is installed")
    except ImportError:
        pass
    try:
        import mtcnn  # noqa: F401
        pytest.skip("mtcnn is installed")
    except ImportError:
        pass
    with pytest.raises(UserError, match="facenet"):
        faces.FaceDetector("mtcnn")
    with pytest.raises(UserError, match="not one of"):
        faces.FaceDetector("dlib")


def test_smooth_boxes_fills_short_gaps_and_averages():
    b = [Box(0, 0, 10, 10), None, None, Box(30, 0, 10, 10), Box(30, 0, 10, 10)]
    filled = faces.smooth_boxes(b, max_gap=2, window=1)
    assert filled[1] == Box(10, 0, 10, 10) and filled[2] == Box(20, 0, 10, 10)
    # a gap longer than max_gap stays empty and splits the smoothing runs
    long_gap = [Box(0, 0, 10, 10), None, None, None, Box(40, 0, 10, 10), Box(50, 0, 10, 10)]
    out = faces.smooth_boxes(long_gap, max_gap=2, window=3)
    assert out[1:4] == [None, None, None]
    assert out[0] == Box(0, 0, 10, 10) and out[4] == Box(45, 0, 10, 10) and out[5] == Box(45, 0, 10, 10)
    # the ends take the nearest box; max_gap=None fills everything
    assert faces.smooth_boxes([None, Box(5, 5, 4, 4), None], max_gap=1, window=1) == [Box(5, 5, 4, 4)] * 3
    assert faces.smooth_boxes([None] * 3) == [None] * 3
    jitter = [Box(10 + (-1) ** i, 0, 10, 10) for i in range(9)]
    sm = faces.smooth_boxes(jitter, window=5)
    assert all(abs(s.x - 10) <= 0.2 for s in sm[2:-2])


def test_square_crop_centres_scales_and_pads():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[40:60, 90:110] = 255  # a 20x20 white square
    crop = faces.square_crop(rgb, Box(90, 40, 20, 20), size=40, scale=2.0)  # 40x40 around it
    assert crop.shape == (40, 40, 3)
    assert crop[10:30, 10:30].min() == 255 and crop[:8].max() == 0 and crop[:, :8].max() == 0
    # a box at the corner: the part outside the frame is black, the frame's part kept
    rgb[:] = 200
    corner = faces.square_crop(rgb, Box(-10, -10, 20, 20), size=20, scale=1.0)
    assert corner[:10, :10].max() == 0 and corner[10:, 10:].min() == 200
    assert faces.square_crop(rgb, Box(500, 500, 10, 10), size=8).max() == 0  # wholly outside
    assert faces.resize_square(rgb, 32).shape == (32, 32, 3)
