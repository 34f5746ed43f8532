"""Clip cutting, padding, minority spans (SPEC §3) and subject parts, on hand-worked examples."""

import collections
import hashlib

import numpy as np
import pytest

from auvmae_jax.input_pipeline import decode_jpeg
from data_builders import clips


@pytest.mark.parametrize(
    "num_frames, length, stride, expected",
    [
        (40, 16, None, [0, 16, 32]),  # last clip runs past the end (8 real frames)
        (32, 16, None, [0, 16]),  # exact fit: no padded clip
        (5, 16, None, [0]),
        (0, 16, None, []),
        (40, 16, 8, [0, 8, 16, 24]),  # 24 + 16 = 40 reaches the end
        (41, 16, 8, [0, 8, 16, 24, 32]),
        (3, 1, 1, [0, 1, 2]),
    ],
)
def test_clip_starts(num_frames, length, stride, expected):
    starts = clips.clip_starts(num_frames, length, stride)
    assert starts == expected
    covered = {f for s in starts for f in range(s, min(s + length, num_frames))}
    assert covered == set(range(num_frames))


def test_clip_starts_rejects_gaps():
    with pytest.raises(ValueError):
        clips.clip_starts(40, 16, 17)
    with pytest.raises(ValueError):
        clips.clip_starts(40, 16, 0)


def test_pad_clip_list_of_bytes():
    labels = np.array([[1, 0], [0, 1]], np.uint8)
    valid = np.ones_like(labels)
    frames, lab, val = clips.pad_clip([b"a", b"b"], labels, valid, 4)
    assert frames == [b"a", b"b", b"b", b"b"]
    np.testing.assert_array_equal(lab, [[1, 0], [0, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(val, [[1, 1], [1, 1], [0, 0], [0, 0]])
    assert lab.dtype == np.uint8 and val.dtype == np.uint8


def test_pad_clip_array_and_full_clip():
    frames = np.arange(3 * 2).reshape(3, 2)
    f, lab, val = clips.pad_clip(frames, np.ones((3, 1)), np.ones((3, 1)), 5)
    np.testing.assert_array_equal(f, [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    np.testing.assert_array_equal(val[:, 0], [1, 1, 1, 0, 0])
    f, lab, val = clips.pad_clip(frames, np.ones((3, 1)), np.ones((3, 1)), 3)
    assert f is frames and val.sum() == 3
    with pytest.raises(ValueError):
        clips.pad_clip([], np.zeros((0, 1)), np.zeros((0, 1)), 3)


def _labels(num_frames, active, col=0, num_aus=3):
    lab = np.zeros((num_frames, num_aus), np.uint8)
    lab[list(active), col] = 1
    return lab


def test_minority_span_single():
    lab = _labels(60, range(5, 8))
    # starts at the first active frame, ends after 15 quiet frames following the last one
    assert clips.minority_spans(lab, np.ones_like(lab), [0, 2]) == [(5, 8 + 15)]


def test_minority_spans_merge_and_split_by_quiet_rule():
    # 14 quiet frames (6..19) between two active frames: one span
    lab = _labels(60, [5, 20])
    assert clips.minority_spans(lab, np.ones_like(lab), [0]) == [(5, 36)]
    # exactly 15 quiet frames (6..20): the first span ends, a new one starts at 21
    lab = _labels(60, [5, 21])
    assert clips.minority_spans(lab, np.ones_like(lab), [0]) == [(5, 21), (21, 37)]
    # two different minority columns chain into one span
    lab = _labels(60, [5]) | _labels(60, [12], col=2)
    assert clips.minority_spans(lab, np.ones_like(lab), [0, 2]) == [(5, 28)]


def test_minority_span_cut_by_video_end_and_custom_quiet():
    lab = _labels(60, [55, 59])
    assert clips.minority_spans(lab, np.ones_like(lab), [0]) == [(55, 60)]
    lab = _labels(20, [2, 6])
    assert clips.minority_spans(lab, np.ones_like(lab), [0], quiet=3) == [(2, 6), (6, 10)]


def test_minority_spans_ignore_other_columns_and_invalid_frames():
    lab = _labels(40, range(3, 30), col=1)  # not a minority column
    assert clips.minority_spans(lab, np.ones_like(lab), [0, 2]) == []
    lab = _labels(40, [4, 10])
    valid = np.ones_like(lab)
    valid[4] = 0  # unknown label at frame 4
    assert clips.minority_spans(lab, valid, [0]) == [(10, 26)]
    assert clips.minority_spans(lab, valid, []) == []


def test_iter_clips():
    assert list(clips.iter_clips(40, 16)) == [(0, 16), (16, 32), (32, 40)]
    assert list(clips.iter_clips(40, 16, 8)) == [(0, 16), (8, 24), (16, 32), (24, 40)]
    # a span's clips end with the span (SPEC §3), cut every clip_length frames
    spans = [(5, 21), (30, 70), (90, 100)]
    assert list(clips.iter_clips(100, 16, spans=spans)) == [
        (5, 21), (30, 46), (46, 62), (62, 70), (90, 100)]
    assert list(clips.iter_clips(100, 16, spans=[(40, 45)])) == [(40, 45)]


def test_jpeg_roundtrip():
    yy, xx = np.mgrid[:32, :48]
    frame = np.stack([xx * 5, yy * 7, 128 + 0 * xx], -1).astype(np.uint8)  # smooth: JPEG keeps it
    data = clips.encode_jpeg(frame, 95)
    assert data[:2] == b"\xff\xd8" and data == clips.encode_jpeg(frame, 95)
    back = np.asarray(decode_jpeg(data))
    assert back.shape == frame.shape and np.abs(back.astype(int) - frame).mean() < 3


def test_part_of_subject_is_a_stable_hash():
    # The first 8 bytes of sha256(id), big-endian, mod 3 -> part 1 + that (worked out once by hand):
    # S001 c5e0e70cb9001fc3 = 14258650462084407235 = 1 (mod 3); S002 c842f8af9e829462 = 2;
    # S003 f598aee2eda0ebd4 = 0; F001 5f5a1e4fe85beeae = 0; SN010 2adb8a38ac9783e3 = 2. (Mod 3 the
    # byte order would not matter, 256 = 1 mod 3; the number of bytes and the hash do.)
    expected = {"S001": "part2", "S002": "part3", "S003": "part1", "F001": "part1", "SN010": "part3"}
    assert hashlib.sha256(b"S001").digest()[:8].hex() == "c5e0e70cb9001fc3"
    assert 0xc5e0e70cb9001fc3 == 14258650462084407235 and 14258650462084407235 % 3 == 1
    assert {sid: clips.part_of_subject(sid) for sid in expected} == expected


@pytest.mark.parametrize("n", range(1, 13))
def test_assign_parts_fills_every_part(n):
    ids = [f"S{i + 1:03d}" for i in range(n)]
    parts = clips.assign_parts(ids)
    assert sorted(parts) == ids
    assert len(set(parts.values())) == min(n, 3)
    assert clips.assign_parts(ids[::-1]) == parts  # independent of input order


def test_assign_parts_uses_hash_when_it_fills_all_parts():
    ids = [f"S{i + 1:03d}" for i in range(24)]
    parts = clips.assign_parts(ids)
    by_hash = {s: clips.part_of_subject(s) for s in ids}
    # These 24 ids fill all three parts by their hash (12, 6 and 6): the hash is kept as it is.
    assert collections.Counter(by_hash.values()) == {"part1": 6, "part2": 12, "part3": 6}
    assert parts == by_hash
    # S001, S005 and S008 all hash to part2: dealt round-robin in the order of their hashes instead
    # (S005 0x09fd... < S008 0x7072... < S001 0xc5e0...).
    assert {clips.part_of_subject(s) for s in ("S001", "S005", "S008")} == {"part2"}
    assert clips.assign_parts(["S001", "S005", "S008"]) == {"S005": "part1", "S008": "part2", "S001": "part3"}
    # One part empty is enough: S001, S002 (part3), S005 leave part1 empty (S005 < S001 < S002 by hash).
    assert clips.assign_parts(["S002", "S001", "S005"]) == {"S005": "part1", "S001": "part2", "S002": "part3"}


def test_au_clip_features_schema():
    feats = clips.au_clip_features(8, 5)
    assert feats["labels"].shape == (8, 5) and feats["valid"].shape == (8, 5)
    assert feats["labels"].np_dtype == np.uint8 and feats["start_frame"].np_dtype == np.int32
    ex = feats.encode_example({
        "frames": np.array([b"x"] * 8, dtype=object), "labels": np.zeros((8, 5), np.uint8),
        "valid": np.ones((8, 5), np.uint8), "subject": "S001", "video": "S001_V1", "start_frame": 1,
    })
    assert list(ex["frames"]) == [b"x"] * 8
