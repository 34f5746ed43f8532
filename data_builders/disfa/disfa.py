"""`disfa`: DISFA videos as face-cropped clips with per-frame AU labels (DATA.md schema).

Reads the layout the owners ship (DATA.md, "DISFA"):

- `ActionUnit_Labels/SN001/SN001_au1.txt` ...: one file per AU, lines `frame,intensity`
  (frames from 1, intensity 0-5); an AU is active when its intensity is >= 2. The 8
  evaluated AUs (1, 2, 4, 6, 9, 12, 25, 26) are the label columns.
- `Videos_LeftCamera/LeftVideoSN001_comp.avi` (config `left`, the default) or
  `Videos_RightCamera/RightVideoSN001_Comp.avi` (config `right`; the folder may also
  be spelled `Video_RightCamera`). Names are matched ignoring case, and the file
  extension is not checked. Label frame k is the k-th decoded frame of the video.

Frames and labels are matched by frame number: a label row beyond the video's last
decodable frame gets the previous image with `valid = 0`, and is reported; a frame
that some AU file lacks is `valid = 0` for that AU. A line of an AU file that is
malformed or out of range (`3,9`) is reported and makes only that frame's cell
`valid = 0` (a line without a frame number is dropped); an AU file that is missing,
empty or has no usable line is reported and its column is `valid = 0` for that
subject. Subject folders not named `SNnnn` are reported; subjects outside the
DATA.md parts, subjects without a video, videos without a label folder and videos
that cannot be read are reported and skipped (counted in `videos_skipped`).

Splits: `part1..3` (the subject parts of DATA.md), `part1_aug..3_aug` (minority-AU
clips of SPEC §3: AUs 1, 2, 9), raw: flips and crops are the input pipeline's job.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from data_builders import layouts
from data_builders.frames import FrameSource, error_reason
from data_builders.report import BuildReport
from data_builders.video_builder import VideoBuildConfig, VideoClipBuilder, VideoItem, frame_ranges

AUS = (1, 2, 4, 6, 9, 12, 25, 26)
MINORITY_AUS = (1, 2, 9)
ACTIVE_INTENSITY = 2
PARTS = {
    "part1": "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016".split(),
    "part2": "SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024".split(),
    "part3": "SN003 SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004".split(),
}
PART_OF = {s: p for p, subjects in PARTS.items() for s in subjects}
_CAMERA_DIRS = {"left": r"videos?_leftcamera", "right": r"videos?_rightcamera"}


@dataclasses.dataclass(eq=False, kw_only=True)
class DisfaConfig(VideoBuildConfig):
    """`camera`: 'left' (default, as in the literature) or 'right'."""

    camera: str = "left"

    def base_name(self) -> str:
        if self.camera not in _CAMERA_DIRS:
            raise ValueError(f"camera must be 'left' or 'right', got {self.camera!r}")
        return self.camera


def read_intensities(path: str, report: BuildReport | None = None, max_lines: int = 5,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(frames, intensities) int64 `[L]` of one `SNxxx_auN.txt`; intensity -1 where unusable.

    A line with a frame number >= 1 but no intensity 0-5 keeps its frame with -1 (that
    cell is `valid = 0`); a line without a frame number is dropped; a frame listed again
    with another intensity gets -1. All are reported (the first `max_lines` by line) and
    counted in `label_lines_unusable`. ValueError if the file is empty or no line has a
    frame number. Frames come in ascending order.
    """
    numbers, values, bad = [], [], []
    with open(path, encoding="utf-8-sig", errors="replace") as f:  # -sig: a byte-order mark is no text
        for k, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            fields = [x for x in re.split(r"[,\s]+", text) if x]
            frame = _integer(fields[0]) if fields else None
            if frame is None or frame < 1:
                bad.append(f"line {k} {text[:40]!r}: no frame number >= 1: line dropped")
                continue
            value = _integer(fields[1]) if len(fields) == 2 else None
            if value is None or not 0 <= value <= 5:
                bad.append(f"line {k} {text[:40]!r}: not 'frame,intensity' with intensity 0-5: "
                           f"valid = 0 for frame {frame}")
                value = -1
            numbers.append(frame)
            values.append(value)
    table: dict[int, int] = {}
    for frame, value in zip(numbers, values):
        if table.setdefault(frame, value) != value:
            if table[frame] != -1:
                bad.append(f"frame {frame} listed again with another intensity: valid = 0 for it")
            table[frame] = -1
    if report is not None and bad:
        for reason in bad[:max_lines]:
            report.problem(path, reason)
        if len(bad) > max_lines:
            report.problem(path, f"... and {len(bad) - max_lines} more unusable line(s)")
        report.count("label_lines_unusable", len(bad))
    if not numbers:
        raise ValueError("no line 'frame,intensity'" if bad else "empty label file")
    frames = sorted(table)
    return np.asarray(frames, np.int64), np.asarray([table[f] for f in frames], np.int64)


def _integer(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def subject_labels(folder: str, subject: str, report: BuildReport):
    """(numbers `[F]`, labels, valid `[F, 8]` uint8) of one subject; None if no AU file is usable."""
    per_au, paths = {}, {}
    for au in AUS:
        path = paths[au] = layouts.find_child(folder, rf"{subject}_au{au}\.txt", want_dir=False)
        if path is None:
            report.problem(os.path.join(folder, f"{subject}_au{au}.txt"), "missing: AU column valid = 0")
            continue
        try:
            per_au[au] = read_intensities(path, report)
        except (ValueError, OSError) as e:
            report.problem(path, f"{e}: AU column valid = 0")
    if not per_au:
        return None
    numbers = np.unique(np.concatenate([f for f, _ in per_au.values()]))
    labels = np.zeros((len(numbers), len(AUS)), np.uint8)
    valid = np.zeros_like(labels)
    for c, au in enumerate(AUS):
        if au in per_au:
            f, v = per_au[au]
            rows = np.searchsorted(numbers, f)
            labels[rows, c] = v >= ACTIVE_INTENSITY
            valid[rows, c] = v >= 0
            if len(f) < len(numbers):  # frames the subject's other AU files label
                lacking = np.setdiff1d(numbers, f)
                report.problem(paths[au], f"{len(lacking)} frame(s) labelled in the other AU "
                               f"files are not in this one ({frame_ranges(lacking)}): valid = 0 there")
                report.count("label_cells_missing", len(lacking))
    return numbers, labels, valid


def list_videos(manual_dir: str, camera: str, report: BuildReport) -> list[VideoItem]:
    """The DISFA videos under `manual_dir` (or its one sub-folder holding `ActionUnit_Labels`)."""
    from auvmae_jax import video_io
    from auvmae_jax.errors import UserError

    root = layouts.dataset_root(manual_dir, "actionunit_labels")
    if root is None:
        report.problem(manual_dir, "no ActionUnit_Labels folder here or in a sub-folder")
        return []
    label_root = layouts.find_child(root, "actionunit_labels", want_dir=True)
    video_dir = layouts.find_child(root, _CAMERA_DIRS[camera], want_dir=True)
    if video_dir is None:
        report.problem(root, f"no {camera}-camera video folder (Videos_{camera.title()}Camera)")
        return []
    report.note(f"disfa: labels in {os.path.basename(label_root)}, {camera}-camera videos in "
                f"{os.path.basename(video_dir)}")
    items, labelled = [], set()
    for name in layouts.children(label_root):
        folder = os.path.join(label_root, name)
        if not os.path.isdir(folder):
            continue
        subject = name.upper()
        if not re.fullmatch(r"SN\d{3}", subject):
            report.problem(folder, "not a subject folder (expected SNnnn): skipped")
            continue
        labelled.add(subject)
        if subject not in PART_OF:
            report.skip(folder, f"{subject} is in none of the DATA.md parts: skipped")
            continue
        video = layouts.find_child(video_dir, rf"{camera}video{subject}_comp\.\w+", want_dir=False)
        if video is None:
            report.skip(os.path.join(video_dir, f"{camera.title()}Video{subject}_comp.avi"),
                        "no video for this subject: skipped")
            continue
        found = subject_labels(folder, subject, report)
        if found is None:
            report.skip(folder, "no usable AU label file: skipped")
            continue
        numbers, labels, valid = found
        try:
            info = video_io.probe(video)
        except UserError as e:
            report.skip(video, f"skipped: {error_reason(e, video)}")
            continue
        if info.num_frames > numbers[-1]:
            report.problem(video, f"video has {info.num_frames} frames (header), labels end at "
                           f"frame {numbers[-1]}: the frames after it are not used")
            report.count("frames_without_labels", int(info.num_frames - numbers[-1]))
        items.append(VideoItem(subject=subject, video=subject, source=FrameSource(video, None, 1),
                               split=PART_OF[subject], numbers=numbers, labels=labels, valid=valid))
    for name in layouts.children(video_dir):  # videos that no label folder names
        m = re.fullmatch(rf"{camera}video(sn\d{{3}})_comp\.\w+", name, re.IGNORECASE)
        if m and m.group(1).upper() not in labelled:
            report.skip(os.path.join(video_dir, name), f"no label file (no {os.path.basename(label_root)}/"
                        f"{m.group(1).upper()} folder): skipped")
    return items


class Disfa(VideoClipBuilder):
    """DISFA clips (see module docstring); build with `auvmae build-data --dataset=disfa`."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Face crops rotated so the eyes are level (align_faces)."}
    BUILDER_CONFIGS = [DisfaConfig(), DisfaConfig(camera="right")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    DISFA is licensed by its owners (http://mohammadmahoor.com/disfa/). Place in the
    manual dir (or in one folder inside it) the folders as they ship:
      ActionUnit_Labels/SN001/SN001_au1.txt ... (one folder per subject, one file per AU)
      Videos_LeftCamera/LeftVideoSN001_comp.avi ...
      Videos_RightCamera/RightVideoSN001_Comp.avi ...   (only for the `right` config)
    """
    aus = AUS
    minority_aus = MINORITY_AUS

    def _info(self) -> tfds.core.DatasetInfo:
        return self._au_clip_info(__doc__, "http://mohammadmahoor.com/disfa/",
                                  active_intensity=ACTIVE_INTENSITY)

    def _list_videos(self, manual_dir: str, report: BuildReport) -> list[VideoItem]:
        return list_videos(manual_dir, self.builder_config.camera, report)
