"""The DISFA builder on a small replica of its shipped layout (face detection on)."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from auvmae_jax import finetune
from auvmae_jax.errors import UserError
from auvmae_jax.input_pipeline import decode_jpeg
from configs import finetune as finetune_configs
from data_builders import clips
from data_builders.disfa import AUS, MINORITY_AUS, Disfa, DisfaConfig, disfa
from data_builders.report import BuildReport
from tests import dataset_replicas as R

FRAMES = 20
CONFIG = dict(image_size=32, clip_length=8)
BLANK = 5  # SN001's frame without a face
BAD_LINE = 3  # the frame of SN003_au2.txt whose line is '3,9'


def intensity(subject: int, au: int, frame: int) -> int:
    """Intensity 0-3 of an AU at a 1-based frame: every value, intensity 1 included, occurs."""
    return (frame + au + subject) % 4


def _write_labels(root, subject, index, frames, skip_au=None, empty_au=None, bad_line=None):
    """`bad_line`: (au, frame) whose line reads 'frame,9' (intensity out of range)."""
    folder = os.path.join(root, "ActionUnit_Labels", subject)
    os.makedirs(folder, exist_ok=True)
    for au in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26):
        if au == skip_au:
            continue
        with open(os.path.join(folder, f"{subject}_au{au}.txt"), "w") as f:
            if au != empty_au:
                f.writelines(f"{k},{9 if (au, k) == bad_line else intensity(index, au, k)}\n"
                             for k in range(1, frames + 1))


def write_disfa(root):
    """SN001 (a frame without a face), SN010 (video one frame short of its labels), SN013 (an
    empty AU file), SN003 (a line '3,9' in its AU2 file), SN002 (corrupt video), SN009 (a video
    without labels), SN030 (labels without video), and folders with odd names."""
    videos = os.path.join(root, "Videos_LeftCamera")
    for index, subject in enumerate(["SN001", "SN010", "SN013", "SN003"]):
        frames = R.face_frames(index, FRAMES)
        if subject == "SN001":
            frames[BLANK - 1] = 90
        if subject == "SN010":
            frames = frames[:-1]
        name = "LeftVideoSN010_Comp.avi" if subject == "SN010" else f"LeftVideo{subject}_comp.avi"
        R.write_video(os.path.join(videos, name), frames)
        _write_labels(root, subject, index, FRAMES, empty_au=9 if subject == "SN013" else None,
                      bad_line=(2, BAD_LINE) if subject == "SN003" else None)
    R.write_corrupt(os.path.join(videos, "LeftVideoSN002_comp.avi"))
    _write_labels(root, "SN002", 9, FRAMES)
    R.write_corrupt(os.path.join(videos, "LeftVideoSN009_comp.avi"))  # no ActionUnit_Labels/SN009
    _write_labels(root, "SN030", 8, FRAMES)  # no LeftVideoSN030_comp.avi
    os.makedirs(os.path.join(root, "ActionUnit_Labels", "SN01x_backup"))
    with open(os.path.join(root, "ActionUnit_Labels", "readme.txt"), "w") as f:
        f.write("not a subject")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("disfa_manual") / "DISFA")  # manual_dir is the folder above
    write_disfa(root)
    builder = Disfa(config=DisfaConfig(**CONFIG), data_dir=str(tmp_path_factory.mktemp("tfds")),
                    file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.dirname(root), try_download_gcs=False))
    return builder


def _examples(builder, split):
    src = builder.as_data_source(split)
    return sorted((src[i] for i in range(len(src))), key=lambda e: (e["video"], e["start_frame"]))


def test_read_intensities_active_from_2(tmp_path):
    path = tmp_path / "SN001_au1.txt"
    path.write_text("1,0\n2,1\n3,2\n4,5\n\n")
    frames, values = disfa.read_intensities(str(path))
    assert frames.tolist() == [1, 2, 3, 4] and values.tolist() == [0, 1, 2, 5]
    # One bad line costs only its own cell: frame 2 kept with intensity -1 (valid = 0), the
    # line without a frame number dropped; both reported by line and counted.
    path.write_text("1,0\n2,7\nx,3\n4,2\n")
    report = BuildReport()
    frames, values = disfa.read_intensities(str(path), report)
    assert frames.tolist() == [1, 2, 4] and values.tolist() == [0, -1, 2]
    reasons = [p.reason for p in report.problems]
    assert reasons[0].startswith("line 2 '2,7'") and "valid = 0 for frame 2" in reasons[0]
    assert reasons[1].startswith("line 3 'x,3'") and "dropped" in reasons[1]
    assert report.counts["label_lines_unusable"] == 2
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        disfa.read_intensities(str(path))
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="no line"):
        disfa.read_intensities(str(path))
    # A byte-order mark (Windows editors write one) is no part of line 1; a frame listed twice
    # with other intensities is unknown; the frames come sorted.
    path.write_bytes(b"\xef\xbb\xbf1,3\r\n3,0\r\n2,4\r\n3,2\r\n2,4\r\n")
    report = BuildReport()
    frames, values = disfa.read_intensities(str(path), report)
    assert frames.tolist() == [1, 2, 3] and values.tolist() == [3, 4, -1]
    assert [p.reason for p in report.problems] == [
        "frame 3 listed again with another intensity: valid = 0 for it"]


def test_an_au_file_shorter_than_the_others_is_reported(tmp_path):
    from data_builders.disfa import disfa

    for au in disfa.AUS:  # frames 1-20 in every AU file, 1-17 in AU12's
        last = 17 if au == 12 else 20
        (tmp_path / f"SN001_au{au}.txt").write_text("".join(f"{n},3\n" for n in range(1, last + 1)))
    report = BuildReport()
    numbers, labels, valid = disfa.subject_labels(str(tmp_path), "SN001", report)
    c = disfa.AUS.index(12)
    assert numbers.tolist() == list(range(1, 21)) and valid[:, c].tolist() == [1] * 17 + [0] * 3
    assert valid[:, :c].all() and labels[:17, c].all()
    assert [(os.path.basename(p.path), p.reason) for p in report.problems] == [
        ("SN001_au12.txt",
         "3 frame(s) labelled in the other AU files are not in this one (18-20): valid = 0 there")]
    assert report.counts["label_cells_missing"] == 3


def test_splits_and_fold_membership(built):
    counts = {k: v.num_examples for k, v in built.info.splits.items()}
    # 20 frames in clips of 8: starts 1, 9, 17; SN002's corrupt video is skipped.
    assert counts["part1"] == 6 and counts["part2"] == 3 and counts["part3"] == 3
    subjects = {p: {e["subject"].decode() for e in _examples(built, p)} for p in clips.PARTS}
    assert subjects == {"part1": {"SN001", "SN010"}, "part2": {"SN013"}, "part3": {"SN003"}}
    assert built.info.metadata["aus"] == list(AUS)


def test_labels_valid_and_clip_boundaries(built):
    sn001 = [e for e in _examples(built, "part1") if e["video"] == b"SN001"]
    assert [int(e["start_frame"]) for e in sn001] == [1, 9, 17]
    labels = np.concatenate([e["labels"] for e in sn001])[:FRAMES]
    expected = np.array([[intensity(0, au, k) >= 2 for au in AUS] for k in range(1, FRAMES + 1)])
    np.testing.assert_array_equal(labels, expected)
    assert (np.array([[intensity(0, au, k) for au in AUS] for k in range(1, FRAMES + 1)]) == 1).any()
    last = sn001[-1]
    assert last["valid"][:4].all() and not last["valid"][4:].any()  # frames 17-20, then padding
    assert not last["labels"][4:].any()
    assert all(len(e["frames"]) == 8 for e in sn001)
    assert np.asarray(decode_jpeg(sn001[0]["frames"][0])).shape == (32, 32, 3)


def test_missing_frame_repeats_previous_image_with_valid_0(built):
    last = [e for e in _examples(built, "part1") if e["video"] == b"SN010"][-1]
    assert int(last["start_frame"]) == 17
    assert last["valid"][:3].all() and not last["valid"][3].any()  # frame 20 has no image
    assert last["frames"][3] == last["frames"][2]


def test_empty_au_file_makes_its_column_unknown(built):
    (clip, *_) = _examples(built, "part2")
    col = AUS.index(9)
    assert not clip["valid"][:, col].any()
    assert clip["valid"][:, [c for c in range(len(AUS)) if c != col]].all()


def test_one_bad_label_line_invalidates_only_its_cell(built):
    first = [e for e in _examples(built, "part3") if e["video"] == b"SN003"][0]  # frames 1-8
    expected = np.ones((8, len(AUS)), np.uint8)
    expected[BAD_LINE - 1, AUS.index(2)] = 0
    np.testing.assert_array_equal(first["valid"], expected)
    problems = [p for p in built.report.problems if p.path.endswith("SN003_au2.txt")]
    assert [p.reason for p in problems] == [
        "line 3 '3,9': not 'frame,intensity' with intensity 0-5: valid = 0 for frame 3"]
    assert built.report.counts["label_lines_unusable"] == 1


def test_augmentation_clips_follow_minority_spans(built):
    aug = [e for e in _examples(built, "part1_aug") if e["video"] == b"SN001"]
    labels = np.array([[intensity(0, au, k) >= 2 for au in AUS] for k in range(1, FRAMES + 1)], np.uint8)
    spans = clips.minority_spans(labels, np.ones_like(labels), [AUS.index(a) for a in MINORITY_AUS])
    starts = [lo + 1 + s for lo, hi in spans for s in clips.clip_starts(hi - lo, 8)]
    assert spans and [int(e["start_frame"]) for e in aug] == starts


def test_report_names_files_and_counts(built):
    text = built.report.summary()
    problems = {os.path.basename(p.path.rstrip("/")): p.reason for p in built.report.problems}
    assert problems["LeftVideoSN002_comp.avi"] == "skipped: has no video stream"
    assert "not a subject folder" in problems["SN01x_backup"]
    assert "empty label file" in problems["SN013_au9.txt"]
    assert "1 labelled frame(s) without image (20)" in problems["LeftVideoSN010_Comp.avi"]
    assert problems["LeftVideoSN009_comp.avi"] == "no label file (no ActionUnit_Labels/SN009 folder): skipped"
    assert problems["LeftVideoSN030_comp.avi"] == "no video for this subject: skipped"
    counts = built.report.counts
    assert counts["videos_built"] == 4 and counts["frames_missing"] == 1
    assert counts["videos_skipped"] == 3  # SN002 (corrupt), SN009 (no labels), SN030 (no video)
    assert "videos_skipped: 3" in text
    assert "found: disfa: labels in ActionUnit_Labels, left-camera videos in Videos_LeftCamera" in text
    assert counts["frames_without_face"] == 1  # SN001's blank frame took its neighbour's box
    assert "problems: " in text and "SN002" in text
    assert not [n for n in os.listdir(built._data_dir_root) if "crops" in n]  # temporary crops gone


def test_finetune_reads_the_folds(built):
    config = finetune_configs.get_config("disfa,video,1")  # the paper's recipe: minority clips too
    assert finetune.splits(config, built) == ("part2+part3+part2_aug+part3_aug", "part1")
    config.data.train_aug = False
    assert finetune.splits(config, built) == ("part2+part3", "part1")


def test_nothing_to_build_is_an_error(tmp_path):
    root = tmp_path / "manual"
    R.write_corrupt(str(root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"))
    _write_labels(str(root), "SN001", 0, 4)
    builder = Disfa(config=DisfaConfig(**CONFIG, detect_faces=False), data_dir=str(tmp_path / "tfds"),
                    file_format="array_record")
    with pytest.raises(UserError, match="no video"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=str(root), try_download_gcs=False))


def test_beam_build_matches_the_local_build(built, tmp_path):
    pytest.importorskip("apache_beam")
    from apache_beam.options.pipeline_options import PipelineOptions

    root = str(tmp_path / "manual")
    write_disfa(root)
    beam = Disfa(config=DisfaConfig(**CONFIG), data_dir=str(tmp_path / "tfds"), file_format="array_record")
    beam.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=root, beam_options=PipelineOptions(["--runner=DirectRunner"])))
    assert set(beam.info.splits) == set(built.info.splits)
    for split in ("part1", "part1_aug"):
        for a, b in zip(_examples(built, split), _examples(beam, split), strict=True):
            assert (a["video"], a["start_frame"]) == (b["video"], b["start_frame"])
            np.testing.assert_array_equal(a["frames"], b["frames"])
            np.testing.assert_array_equal(a["valid"], b["valid"])
    def problems(builder):  # the two builds read replicas in different folders
        return sorted((os.path.basename(p.path), p.reason.replace(os.path.dirname(p.path), ""))
                      for p in builder.report.problems)

    assert problems(beam) == problems(built)
    assert beam.report.counts == built.report.counts  # skipped videos, missing frames, built videos
