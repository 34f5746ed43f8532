"""Pure steps shared by the real-data builders: runs, nearest boxes, clip cutting, names."""

import os

import numpy as np
import pytest

from data_builders import frames, video_builder
from data_builders.report import BuildReport
from data_builders.video_builder import ClipParams, VideoItem

PARAMS = ClipParams(image_size=8, detect=False, jpeg_quality=90, clip_length=4, clip_stride=4,
                    minority_columns=(0,))


def test_segments_split_at_gaps():
    assert video_builder.segments(np.array([3, 4, 5, 9, 10, 20])) == [(0, 3), (3, 5), (5, 6)]
    assert video_builder.segments(np.array([], np.int64)) == []


def test_fill_nearest_prefers_the_earlier_box_on_ties():
    assert frames.fill_nearest([None, "a", None, None, None, "b", None]) == ["a"] * 4 + ["b"] * 3
    assert frames.fill_nearest([None, None]) == [None, None]


def test_unlabelled_clips_end_at_the_last_frame():
    item = VideoItem("s", "v", frames.FrameSource("unused"))
    jpegs = {n: f"f{n}".encode() for n in range(1, 11)}  # 10 frames, clips of 4
    out = dict(video_builder.clip_examples(item, jpegs, PARAMS))
    assert [int(e["start_frame"]) for e in out.values()] == [1, 5, 7]
    assert out["v_000007"]["frames"].tolist() == [b"f7", b"f8", b"f9", b"f10"]
    short = dict(video_builder.clip_examples(item, {1: b"a", 2: b"b"}, PARAMS))
    assert short["v_000001"]["frames"].tolist() == [b"a", b"b", b"b", b"b"]
    # Frame 6's file could not be read: frame 5's image stands in, the clips keep their timing.
    del jpegs[6]
    out = dict(video_builder.clip_examples(item, jpegs, PARAMS))
    assert [int(e["start_frame"]) for e in out.values()] == [1, 5, 7]
    assert out["v_000005"]["frames"].tolist() == [b"f5", b"f5", b"f7", b"f8"]


def test_labelled_clips_fill_missing_images_and_pad_runs():
    numbers = np.array([10, 11, 12, 13, 14, 30])
    labels = np.array([[1], [0], [0], [1], [0], [1]], np.uint8)
    item = VideoItem("s", "v", frames.FrameSource("unused"), "part1", numbers, labels, np.ones_like(labels))
    jpegs = {10: b"a", 12: b"c", 13: b"d", 14: b"e", 30: b"z"}  # 11 has no image
    out = dict(video_builder.clip_examples(item, jpegs, PARAMS))
    assert sorted(out) == ["v_000010", "v_000014", "v_000030"]
    first = out["v_000010"]
    assert first["frames"].tolist() == [b"a", b"a", b"c", b"d"]
    assert first["valid"][:, 0].tolist() == [1, 0, 1, 1]
    assert out["v_000014"]["valid"][:, 0].tolist() == [1, 0, 0, 0]  # end of the run: padded
    aug = dict(video_builder.clip_examples(item, jpegs, PARAMS, aug=True))
    assert sorted(aug) == ["v_aug000010", "v_aug000014", "v_aug000030"]  # one span 10-14, then 30


def test_config_names_carry_non_default_options():
    from data_builders.bp4d import Bp4dConfig
    from data_builders.disfa import DisfaConfig

    assert Bp4dConfig().name == "default"
    assert DisfaConfig(image_size=112, clip_length=64, clip_stride=32, detect_faces=False,
                       jpeg_quality=80).name == "left_s112_t64_stride32_nodetect_q80"
    with pytest.raises(ValueError, match="camera"):
        DisfaConfig(camera="top")


def test_numbered_images_match_integer_names():
    report = BuildReport()
    images = frames.numbered_images(["0034.jpg", "35.jpg", "thumbs.db", "frame_36.jpg", "0037.JPG"],
                                    "folder", report)
    assert images == ((34, "0034.jpg"), (35, "35.jpg"), (37, "0037.JPG"))
    assert "frame_36.jpg" in report.problems[0].reason
    # Two images of one number (a stale 0015.jpg beside 15.jpg, say): neither is taken for the frame.
    report = BuildReport()
    images = frames.numbered_images(["0015.jpg", "15.jpg", "16.jpg", "17.jpg", "17.png"], "F001/T1", report)
    assert images == ((16, "16.jpg"),)
    assert [(p.path, p.reason) for p in report.problems] == [
        ("F001/T1", "2 frame number(s) with more than one image (e.g. 0015.jpg and 15.jpg): left out, "
                    "which is the frame is not known")]
    assert report.counts["frames_ambiguous"] == 2


class _ScriptedDetector:
    """Boxes by frame colour (the frame's number), None where the script has none."""

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, rgb):
        return self.boxes[round(rgb[0, 0, 0] / 20)]


def _numbered_frames(tmp_path, n, shape=(16, 16)):
    from tests import dataset_replicas as R

    frames_ = np.stack([np.full((*shape, 3), 20 * k, np.uint8) for k in range(n)])
    R.write_jpegs(str(tmp_path), frames_, range(n))
    return frames.FrameSource(str(tmp_path), frames.numbered_images(os.listdir(tmp_path), "", BuildReport()))


def test_frames_without_a_face_take_the_nearest_detected_box(tmp_path, monkeypatch):
    """DATA.md: the nearest frame's box, not an interpolation across the gap (and counted)."""
    from auvmae_jax import faces
    from auvmae_jax.faces import Box

    a, b = Box(0, 0, 10, 10), Box(6, 6, 10, 10)
    monkeypatch.setattr(frames, "_detector", lambda kind: _ScriptedDetector([a, None, None, None, None, b]))
    used = {}

    def crop(rgb, box, size, scale, angle):
        used[round(rgb[0, 0, 0] / 20)] = box
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(faces, "square_crop", crop)
    report = BuildReport()
    out = frames.face_crops(_numbered_frames(tmp_path, 6), None, image_size=8, detect=True, jpeg_quality=90,
                            report=report, align=False)
    assert sorted(out) == list(range(6))
    assert [used[k] for k in range(6)] == [a, a, a, b, b, b]  # frame 3 is 2 from b, 3 from a
    assert report.counts["frames_without_face"] == 4


def test_no_detect_resizes_the_whole_frame_and_warns_once(tmp_path):
    from auvmae_jax.input_pipeline import decode_jpeg

    rgb = np.zeros((8, 24, 3), np.uint8)
    rgb[:, :8, 0] = rgb[:, 8:16, 1] = rgb[:, 16:, 2] = 255  # red | green | blue thirds
    source = frames.FrameSource(str(tmp_path), ((1, "1.png"), (2, "2.png")))
    for name in ("1.png", "2.png"):
        frames.Image.fromarray(rgb).save(tmp_path / name)
    report = BuildReport()
    out = frames.face_crops(source, None, image_size=12, detect=False, jpeg_quality=95, report=report)
    crop = np.asarray(decode_jpeg(out[1])).astype(int)
    assert crop.shape == (12, 12, 3)
    assert crop[6, 1].argmax() == 0 and crop[6, 6].argmax() == 1 and crop[6, 10].argmax() == 2  # all three
    assert [w.reason for w in report.warnings] == [
        "frames are 24x8, not square: resized whole to 12x12 (--no-detect), the aspect ratio changes"]
    square = BuildReport()
    frames.face_crops(_numbered_frames(tmp_path / "sq", 2), None, image_size=12, detect=False,
                      jpeg_quality=95, report=square)
    assert square.warnings == [] and not square.problems


def test_unreadable_image_is_named_without_object_addresses(tmp_path):
    (tmp_path / "0001.jpg").write_bytes(b"garbage" * 20)
    report = BuildReport()
    source = frames.FrameSource(str(tmp_path), ((1, "0001.jpg"),))
    assert list(source.iter_frames(None, report)) == []
    assert [str(p) for p in report.problems] == [
        f"{tmp_path / '0001.jpg'}: unreadable image (not a decodable JPEG/PNG/BMP); frame treated as missing"]
