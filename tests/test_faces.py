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
    # max_gap=0 (the builders: DATA.md's nearest box, `frames.fill_nearest`, fills the gaps after):
    # no interpolation, only the runs of detected boxes are smoothed
    runs = faces.smooth_boxes([Box(0, 0, 10, 10), Box(2, 0, 10, 10), None, Box(40, 0, 10, 10)],
                              max_gap=0, window=3)
    assert runs == [Box(1, 0, 10, 10), Box(1, 0, 10, 10), None, Box(40, 0, 10, 10)]
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


# ---------------------------------------------------------------------------- alignment


def rotated_face_frames(num_frames: int, roll: float, face: int = 160, seed: int = 2,
                        height: int = 280, width: int = 340) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic faces turned clockwise on screen by `roll` degrees about their centre.

    Returns frames uint8 `[T, height, width, 3]` and the true eye-line angle of each
    frame: `roll` plus the head roll the renderer drew itself (its own motion, drawn
    from the same random stream, reproduced here).
    """
    import copy

    import cv2

    from data_builders.synthetic_faces import render
    from data_builders.synthetic_faces.timeline import sample_au_intensities

    rng = np.random.default_rng(seed)
    identity, intensities = render.sample_identity(rng), sample_au_intensities(rng, num_frames)
    own = np.degrees(render._sample_motion(copy.deepcopy(rng), num_frames)["rot"])
    faces_px = render.render_frames(identity, intensities, face, rng)
    x, y = (width - face) // 2, (height - face) // 2
    m = cv2.getRotationMatrix2D((x + face / 2, y + face / 2), -roll, 1.0)  # negative: clockwise
    out = np.full((num_frames, height, width, 3), 96, np.uint8)
    for t in range(num_frames):
        out[t, y:y + face, x:x + face] = faces_px[t]
        out[t] = cv2.warpAffine(out[t], m, (width, height), borderValue=(96, 96, 96))
    return out, own + roll


def padded(crop: np.ndarray, pad: int = 60) -> np.ndarray:
    return np.pad(crop, ((pad, pad), (pad, pad), (0, 0)), constant_values=96)


@pytest.mark.parametrize("roll,seed", [(12.0, 2), (-12.0, 5)])
def test_eye_angle_of_a_rolled_face_and_the_aligned_crop(roll, seed):
    frames, truth = rotated_face_frames(3, roll, seed=seed)
    det = faces.FaceDetector()
    found = 0
    for rgb, angle_true in zip(frames, truth):
        box, angle = det.find(rgb)
        assert box is not None
        if angle is None:
            continue
        found += 1
        assert abs(angle - angle_true) < 3.0, (angle, angle_true)
        _, after = det.find(padded(faces.square_crop(rgb, box, 160, angle=angle)))
        assert after is not None and abs(after) < 3.0  # the aligned crop's eyes are level
        _, before = det.find(padded(faces.square_crop(rgb, box, 160)))
        assert before is not None and abs(before - angle_true) < 3.0  # an unrotated crop keeps the roll
    assert found >= 2


def test_no_eyes_no_angle_and_smoothing_fills_it():
    frames, truth = rotated_face_frames(3, 12.0, seed=2)
    det = faces.FaceDetector()
    box = det.detect(frames[1])
    assert det.eye_angle(np.full_like(frames[1], 96), box) is None  # a flat frame
    covered = frames[1].copy()  # the upper part of the face painted over with the cheek's colour
    x, y, w, h = (int(v) for v in box)
    covered[y:y + int(0.6 * h), x:x + w] = frames[1][y + int(0.7 * h), x + w // 4]
    assert det.eye_angle(covered, box) is None
    angles = [det.find(frames[0])[1], det.eye_angle(covered, box), det.find(frames[2])[1]]
    assert angles[0] is not None and angles[1] is None and angles[2] is not None
    smooth = faces.smooth_angles(angles, window=1)
    assert smooth[1] == pytest.approx((angles[0] + angles[2]) / 2) and abs(smooth[1] - truth[1]) < 3.0


def test_pick_eye_pair_rejects_implausible_pairs():
    box = Box(0, 0, 100, 100)
    left, right = (20, 30, 20, 20), (60, 30, 20, 20)
    assert faces.pick_eye_pair([left, right], box) == ((30, 40), (70, 40))
    assert faces.pick_eye_pair([left, (60, 70, 20, 20)], box) is None  # below the upper 60%
    assert faces.pick_eye_pair([left, (60, 30, 40, 40)], box) is None  # sizes too different
    assert faces.pick_eye_pair([left, (60, 5, 20, 20)], box) is None  # rolled beyond 30 degrees
    assert faces.pick_eye_pair([left, (25, 30, 20, 20)], box) is None  # both on one side
    # a stray candidate near the centre line (a brow, the bridge of the nose) loses to the eyes
    assert faces.pick_eye_pair([left, (42, 25, 20, 20), right], box) == ((30, 40), (70, 40))
    assert faces.eye_line_angle((70, 50), (30, 40)) == pytest.approx(np.degrees(np.arctan2(10, 40)))
    assert faces.plausible_angle((0, 0), (10, 10)) is None and faces.plausible_angle((0, 0), (10, 5)) > 26


def test_smooth_angles_fills_gaps_drops_outliers_and_defaults_to_zero():
    assert faces.smooth_angles([None, 10.0, None, 16.0, None], window=1) == [10.0, 10.0, 13.0, 16.0, 16.0]
    assert faces.smooth_angles([None, None]) == [0.0, 0.0]
    out = faces.smooth_angles([12.0, 12.5, 40.0, 12.0, 11.5], window=5)  # 40: a wrong pair of "eyes"
    assert all(11.5 <= a <= 12.5 for a in out)
    assert faces.smooth_angles([0.0, 2.0, 4.0], window=3) == pytest.approx([1.0, 2.0, 3.0])


def test_square_crop_rotates_about_the_centre():
    rgb = np.zeros((100, 120, 3), np.uint8)
    rgb[45:55, 60:70] = 255  # right of the box centre (50, 50)
    rgb[20:30, 45:55] = 128  # above it
    box = Box(25, 25, 50, 50)
    plain = faces.square_crop(rgb, box, 50, scale=1.0)
    assert np.array_equal(faces.square_crop(rgb, box, 50, scale=1.0, angle=0.0), plain)
    turned = faces.square_crop(rgb, box, 50, scale=1.0, angle=90.0)  # counter-clockwise on screen
    assert np.abs(turned.astype(int) - np.rot90(plain).astype(int)).max() <= 1
    assert turned[5:15, 20:30].min() == 255 and turned[20:30, 35:45].max() == 0  # right went to the top


def test_face_crops_are_aligned_at_build_time(tmp_path):
    from PIL import Image

    from data_builders import frames as frame_io
    from data_builders.report import BuildReport

    video, truth = rotated_face_frames(3, 12.0, seed=2)
    names = []
    for t, rgb in enumerate(video):
        names.append((t + 1, f"{t + 1}.png"))
        Image.fromarray(rgb).save(tmp_path / f"{t + 1}.png")
    source = frame_io.FrameSource(str(tmp_path), tuple(names))
    det = faces.FaceDetector()
    for align, expected in ((True, np.zeros(3)), (False, truth)):
        report = BuildReport()
        crops = frame_io.face_crops(source, None, image_size=160, detect=True, jpeg_quality=95,
                                    report=report, align=align)
        for n, want in zip(sorted(crops), expected):
            rgb = np.asarray(Image.open(__import__("io").BytesIO(crops[n])).convert("RGB"))
            _, angle = det.find(padded(rgb))
            assert angle is not None and abs(angle - want) < 3.0, (align, n, angle, want)
        assert report.counts["frames_without_face"] == 0


def test_builder_config_records_alignment(tmp_path):
    from auvmae_jax import build_data

    aligned = build_data.make_builder("disfa", str(tmp_path)).builder_config
    plain = build_data.make_builder("disfa", str(tmp_path), align=False).builder_config
    assert aligned.name == "left" and aligned.as_dict()["align_faces"] is True
    assert plain.name == "left_noalign" and plain.as_dict()["align_faces"] is False
    nodetect = build_data.make_builder("disfa", str(tmp_path), detect=False, align=False).builder_config
    assert nodetect.name == "left_nodetect"  # no detection: nothing to align
