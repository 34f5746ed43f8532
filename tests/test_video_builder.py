"""Pure steps shared by the real-data builders: runs, nearest boxes, clip cutting, names."""

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
    images = frames.numbered_images(["0034.jpg", "35.jpg", "thumbs.db", "frame_36.jpg", "0034.png"],
                                    "folder", report)
    assert images == ((34, "0034.jpg"), (35, "35.jpg"))
    assert "frame_36.jpg" in report.problems[0].reason
