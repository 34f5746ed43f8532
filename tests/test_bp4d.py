"""The BP4D builder on a small replica of its shipped layout (face detection on)."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders import clips
from data_builders.bp4d import AUS, MINORITY_AUS, Bp4d, Bp4dConfig
from data_builders.report import BuildReport
from tests import dataset_replicas as R

CONFIG = dict(image_size=32, clip_length=8)
SEGMENTS = (range(34, 54), range(60, 65))  # coded frame numbers of F001_T1: two runs
NO_IMAGE = 40  # a coded frame of F001_T1 without its JPEG
EMPTY_CELL = (3, 2)  # (frame, AU) of M011_T2 left empty


def value(frame: int, au: int) -> int:
    """0, 1 or 9 (not coded) by frame and AU."""
    return (0, 1, 1, 0, 9)[(frame * 3 + au) % 5]


def write_csv(path, numbers, columns=AUS, extra=(27, 43), cells=None, rows=()):
    """Columns in a shuffled order, with AUs the builder does not use. `cells`: {(frame, au): text}
    written instead of the value; `rows`: extra raw lines at the end."""
    cols = list(reversed(columns)) + list(extra)
    cells = cells or {}
    with open(path, "w") as f:
        f.write(",".join(["0", *map(str, cols)]) + "\n")
        for n in numbers:
            f.write(",".join([str(n), *(cells.get((n, au), str(value(n, au))) for au in cols)]) + "\n")
        f.writelines(f"{r}\n" for r in rows)


def write_bp4d(root):
    occ = os.path.join(root, "AUCoding", "AU_OCC")
    seqs = os.path.join(root, "Sequences(2D+3D)")
    os.makedirs(occ)
    numbers = [n for seg in SEGMENTS for n in seg]
    write_csv(os.path.join(occ, "F001_T1.csv"), numbers)
    frames = R.face_frames(0, 70)
    have = [n for n in range(30, 70) if n != NO_IMAGE]  # frames 30-33, 54-59, 65-69 are not coded
    R.write_jpegs(os.path.join(seqs, "F001", "T1"), frames[have], have, pad=4)
    write_csv(os.path.join(occ, "M011_T2.csv"), range(1, 11), columns=AUS[:-1],  # no AU 24 column
              cells={EMPTY_CELL: ""}, rows=["n/a," + ",".join(["0"] * 13)])  # one empty cell, one bad row
    R.write_jpegs(os.path.join(seqs, "M011", "T2"), R.face_frames(1, 10), range(1, 11), pad=0)
    write_csv(os.path.join(occ, "F007_T1.csv"), range(5, 13))
    with zipfile.ZipFile(os.path.join(seqs, "F007.zip"), "w") as z:
        for n, rgb in zip(range(5, 13), R.face_frames(2, 8)):
            z.writestr(f"F007/T1/{n}.jpg", clips.encode_jpeg(rgb))
    open(os.path.join(occ, "M011_T3.csv"), "w").close()  # empty label file
    write_csv(os.path.join(occ, "F001_T1 copy.csv"), [1])  # odd name
    write_csv(os.path.join(occ, "F003_T1.csv"), [1, 2])  # no frames
    R.write_jpegs(os.path.join(seqs, "F009", "T1"), R.face_frames(3, 2), [1, 2])  # frames, no label file


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bp4d"))
    write_bp4d(root)
    builder = Bp4d(config=Bp4dConfig(**CONFIG), data_dir=str(tmp_path_factory.mktemp("tfds")),
                   file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=root, try_download_gcs=False))
    return builder


def _examples(builder, split, video=None):
    src = builder.as_data_source(split)
    out = sorted((src[i] for i in range(len(src))), key=lambda e: (e["video"], e["start_frame"]))
    return [e for e in out if video is None or e["video"] == video.encode()]


def test_splits_and_clip_boundaries(built):
    counts = {k: v.num_examples for k, v in built.info.splits.items()}
    # F001_T1: run 34-53 -> starts 34, 42, 50; run 60-64 -> 60. M011_T2: 1, 9. F007_T1: 5.
    assert (counts["part1"], counts["part2"], counts["part3"]) == (4, 2, 1)
    assert [int(e["start_frame"]) for e in _examples(built, "part1")] == [34, 42, 50, 60]
    assert {e["subject"] for e in _examples(built, "part3")} == {b"F007"}
    assert {e["video"] for e in _examples(built, "part2")} == {b"M011_T2"}


def test_labels_by_header_name_and_9_is_unknown(built):
    clip = _examples(built, "part1")[0]
    numbers = range(34, 42)
    values = np.array([[value(n, au) for au in AUS] for n in numbers])
    assert (values == 9).any()
    np.testing.assert_array_equal(clip["labels"], (values == 1).astype(np.uint8))
    expected_valid = (values != 9).astype(np.uint8)
    expected_valid[NO_IMAGE - 34] = 0  # coded, but no image
    np.testing.assert_array_equal(clip["valid"], expected_valid)
    assert clip["frames"][NO_IMAGE - 34] == clip["frames"][NO_IMAGE - 35]


def test_segment_ends_are_padded(built):
    last_of_run, second_run = _examples(built, "part1")[2:]
    assert last_of_run["valid"][:4].any() and not last_of_run["valid"][4:].any()  # 50-53, padding
    assert not second_run["valid"][5:].any() and not second_run["labels"][5:].any()  # 60-64, padding


def test_missing_au_column_is_unknown(built):
    clip = _examples(built, "part2")[0]
    assert not clip["valid"][:, AUS.index(24)].any()
    assert clip["valid"][:, AUS.index(1)].any()


def test_an_empty_cell_invalidates_only_that_cell(built):
    clip, second = _examples(built, "part2")  # M011_T2: frames 1-8, 9-10 (the 'n/a' row dropped)
    expected = np.array([[value(n, au) != 9 for au in AUS] for n in range(1, 9)], np.uint8)
    expected[:, AUS.index(24)] = 0  # no column
    frame, au = EMPTY_CELL
    assert expected[frame - 1, AUS.index(au)] == 1
    expected[frame - 1, AUS.index(au)] = 0
    np.testing.assert_array_equal(clip["valid"], expected)
    assert int(second["start_frame"]) == 9 and second["valid"][2:].sum() == 0  # 9, 10, then padding
    reasons = [p.reason for p in built.report.problems if p.path.endswith("M011_T2.csv")]
    assert "1 cell(s) empty or not a number (line 4 (frame 3) AU 2: ''): valid = 0 there" in reasons
    assert any(r.startswith("line 12 'n/a,0") and r.endswith("row dropped") for r in reasons)
    assert built.report.counts["label_cells_unusable"] == 1
    assert built.report.counts["label_rows_dropped"] == 1


def test_augmentation_split(built):
    aug = _examples(built, "part1_aug")
    labels = np.array([[value(n, au) == 1 for au in AUS] for n in SEGMENTS[0]], np.uint8)
    valid = np.array([[value(n, au) != 9 for au in AUS] for n in SEGMENTS[0]], np.uint8)
    valid[NO_IMAGE - 34] = 0
    spans = clips.minority_spans(labels, valid, [AUS.index(a) for a in MINORITY_AUS])
    expected = [(lo + s, min(lo + s + 8, hi)) for lo, hi in spans for s in clips.clip_starts(hi - lo, 8)]
    first = [e for e in aug if e["start_frame"] < 60]  # the clips of the first coded run
    assert spans and [int(e["start_frame"]) for e in first] == [34 + a for a, _ in expected]
    for e, (a, b) in zip(first, expected, strict=True):  # a clip ends with its span (SPEC §3)
        np.testing.assert_array_equal(e["valid"][:b - a], valid[a:b])
        np.testing.assert_array_equal(e["labels"][:b - a], labels[a:b])
        assert not e["valid"][b - a:].any()  # the padding after the span's end


def test_report(built):
    problems = {os.path.basename(p.path): p.reason for p in built.report.problems}
    assert "empty label file" in problems["M011_T3.csv"]
    assert "not named SUBJECT_TASK.csv" in problems["F001_T1 copy.csv"]
    assert "no frames found for F003/T1" in problems["F003_T1.csv"]
    assert any(p.reason == "no column for AU 24: valid = 0 there" for p in built.report.problems
               if p.path.endswith("M011_T2.csv"))
    assert "1 labelled frame(s) without image (40)" in problems["T1"]
    no_label = [p for p in built.report.problems if p.reason.startswith("no label file")]
    assert [(p.path.split(os.sep)[-2:], p.reason) for p in no_label] == [
        (["F009", "T1"], "no label file (AU_OCC/F009_T1.csv): skipped")]
    assert built.report.counts["frames_missing"] == 1
    assert built.report.counts["frames_without_labels"] == 4 + 6 + 5  # 30-33, 54-59, 65-69
    assert built.report.counts["videos_built"] == 3
    assert built.report.counts["videos_skipped"] == 3  # M011_T3 (empty CSV), F003_T1 (no frames), F009_T1


def test_report_says_which_layout_it_found(built):
    assert built.report.notes == [
        "bp4d: labels in AUCoding/AU_OCC, frames in Sequences(2D+3D): 2 sequence folder(s), 1 sequence(s) "
        "in subject zips; image names zero-padded (0034.jpg) in 1, plain (34.jpg) in 2"]
    assert built.report.summary().splitlines()[1].startswith("  found: bp4d: labels in AUCoding/AU_OCC")


def test_odd_values_are_unknown_and_reported(tmp_path):
    from data_builders.bp4d import bp4d

    path = tmp_path / "F001_T1.csv"
    path.write_text("0,1,2,4\n10,1,5,9\n11,0,1,1\n")
    report = BuildReport()
    numbers, labels, valid = bp4d.read_occurrence_csv(str(path), report)
    assert numbers.tolist() == [10, 11]
    assert labels[:, :3].tolist() == [[1, 0, 0], [0, 1, 1]]
    assert valid[:, :3].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert not valid[:, 3:].any()  # columns the file does not have
    assert any("other than 0, 1, 9" in p.reason for p in report.problems)


def test_beam_build_leaves_out_a_split_whose_videos_all_fail(tmp_path):
    """Under Beam too, a part whose only sequence cannot be read is reported and left out, and
    the rest is built (TFDS fails a Beam build on an empty split, so splits follow the preparation)."""
    pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import PipelineOptions

    root = tmp_path / "manual"
    occ, seqs = root / "AUCoding" / "AU_OCC", root / "Sequences"
    occ.mkdir(parents=True)
    write_csv(str(occ / "F001_T1.csv"), range(1, 5))
    R.write_jpegs(str(seqs / "F001" / "T1"), R.face_frames(0, 4), range(1, 5))
    write_csv(str(occ / "M011_T2.csv"), range(1, 5))  # part2's only sequence: no image decodes
    (seqs / "M011" / "T2").mkdir(parents=True)
    for n in range(1, 5):
        (seqs / "M011" / "T2" / f"{n:04d}.jpg").write_bytes(b"not a jpeg" * 10)
    builder = Bp4d(config=Bp4dConfig(**CONFIG, detect_faces=False), data_dir=str(tmp_path / "tfds"),
                   file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(root), beam_options=PipelineOptions(["--runner=DirectRunner",
                                                            "--direct_num_workers=1"])))
    assert builder.info.splits["part1"].num_examples == 1
    assert not {"part2", "part2_aug"} & set(builder.info.splits)
    counts = builder.report.counts
    assert (counts["videos_built"], counts["videos_skipped"]) == (1, 1)
    problems = [(os.path.basename(p.path), p.reason) for p in builder.report.problems]
    unreadable = "unreadable image (not a decodable JPEG/PNG/BMP); frame treated as missing"
    assert problems == [(f"{n:04d}.jpg", unreadable) for n in range(1, 5)] + [
        ("T2", "skipped: no frame could be read")]
    # --no-detect resizes whole frames: the 80x64 ones get one warning per sequence
    assert [(os.path.basename(w.path), w.reason) for w in builder.report.warnings] == [
        ("T1", "frames are 80x64, not square: resized whole to 32x32 (--no-detect), "
               "the aspect ratio changes")]
    assert not [n for n in os.listdir(tmp_path / "tfds") if n.startswith(".auvmae")]  # crops cache gone


def test_label_files_as_copies_write_them(tmp_path):
    from data_builders.bp4d import bp4d

    def read(text, name="F001_T1.csv"):
        (tmp_path / name).write_text(text)
        report = BuildReport()
        numbers, labels, valid = bp4d.read_occurrence_csv(str(tmp_path / name), report)
        return numbers.tolist(), labels[:, :3].tolist(), valid[:, :3].tolist(), report

    expected = ([34, 35], [[1, 0, 0], [0, 1, 0]], [[1, 1, 1], [1, 1, 0]])
    # Tabs or semicolons instead of commas; a pandas index column before the frame column `0`.
    for text in ("0\t1\t2\t4\n34\t1\t0\t0\n35\t0\t1\t9\n", "0;1;2;4\n34;1;0;0\n35;0;1;9\n",
                 ",0,1,2,4\n0,34,1,0,0\n1,35,0,1,9\n"):
        assert read(text)[:3] == expected, text
    # A frame listed twice: the cells the rows agree on stay, the others are unknown.
    numbers, labels, valid, report = read("0,1,2,4\n34,1,0,0\n35,0,1,9\n34,1,1,0\n34,1,0,0\n")
    assert (numbers, labels, valid) == ([34, 35], [[1, 0, 0], [0, 1, 0]], [[1, 0, 1], [1, 1, 0]])
    assert [p.reason for p in report.problems if "again" in p.reason] == [
        "1 frame(s) listed again with other labels (34): valid = 0 where the rows differ"]
    assert report.counts["label_rows_repeated"] == 1
    # No header row: its first line holds labels, and is not taken for AU numbers.
    with pytest.raises(ValueError, match="no header row"):
        read("34,0,1,0\n35,1,0,0\n")
    with pytest.raises(ValueError, match=r"one column: the file is not comma-, tab- or semicolon-separated"):
        read("0|1|2\n34|1|0\n")


def test_image_naming_of_a_sequence():
    from data_builders.bp4d import bp4d

    assert bp4d._naming(((34, "0034.jpg"), (35, "0035.jpg"), (1000, "1000.jpg"))) == "padded"
    assert bp4d._naming(((34, "34.jpg"), (1000, "1000.jpg"))) == "plain"
    assert bp4d._naming(((9, "0009.jpg"), (10, "10.jpg"))) == "mixed"
