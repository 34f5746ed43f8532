"""`bp4d`: BP4D-Spontaneous sequences as face-cropped clips with AU occurrence labels.

Reads the layout the owners ship (DATA.md, "BP4D"):

- `AUCoding/AU_OCC/F001_T1.csv`: a header row; the first column is the frame number,
  then one column per AU, named by its number. Columns are found by header name,
  never by position; the 12 evaluated AUs (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
  are the label columns. 0 = absent, 1 = present, 9 = not coded (`valid = 0`); any
  other value is also `valid = 0` and reported. A missing AU column is `valid = 0`.
- Frames: one image per frame under `Sequences/F001/T1/` (the folder may be named
  `Sequences(2D+3D)` or anything starting with `Sequences`, and a subject may ship
  as `F001.zip` holding `F001/T1/...` or `T1/...`). Image names are the frame
  number, zero-padded or not (`0034.jpg`, `34.jpg`): matched on the integer value.

Only the coded frames are used: clips follow each run of consecutive coded frame
numbers (`start_frame` is the CSV's number). A coded frame without an image gets the
previous image with `valid = 0`, and is reported with counts per sequence. Label
files with odd names, empty files, subjects outside the DATA.md parts and sequences
without frames are reported and skipped.

Splits: `part1..3` (DATA.md subject parts), `part1_aug..3_aug` (minority-AU clips of
SPEC §3: AUs 1, 2, 4, 15, 23, 24).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from data_builders import layouts
from data_builders.frames import FrameSource, numbered_images
from data_builders.report import BuildReport
from data_builders.video_builder import VideoBuildConfig, VideoClipBuilder, VideoItem

AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
MINORITY_AUS = (1, 2, 4, 15, 23, 24)
UNKNOWN = 9
PARTS = {
    "part1": "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008".split(),
    "part2": "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005".split(),
    "part3": "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014".split(),
}
PART_OF = {s: p for p, subjects in PARTS.items() for s in subjects}


@dataclasses.dataclass(eq=False, kw_only=True)
class Bp4dConfig(VideoBuildConfig):
    """Crop size, clip length and stride, detection, JPEG quality (name derived)."""


def read_occurrence_csv(path: str, report: BuildReport):
    """(numbers `[F]`, labels, valid `[F, 12]` uint8) of one AU_OCC file; ValueError if unusable."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError("empty label file")
    header, body = [c.strip() for c in rows[0]], rows[1:]
    if not body:
        raise ValueError("no label rows under the header")
    columns = {}
    for i, name in enumerate(header[1:], 1):
        try:
            columns.setdefault(int(float(name)), i)
        except ValueError:
            continue
    absent = [au for au in AUS if au not in columns]
    if len(absent) == len(AUS):
        raise ValueError(f"no AU column among {header[:6]}...: expected AU numbers as column names")
    if absent:
        report.problem(path, f"no column for AU {', '.join(map(str, absent))}: valid = 0 there")
    table = {}
    odd = 0
    for k, row in enumerate(body, 2):
        try:
            number = int(float(row[0]))
            values = [int(float(row[columns[au]])) if au in columns else UNKNOWN for au in AUS]
        except (ValueError, IndexError):
            raise ValueError(f"line {k} {','.join(row)[:40]!r} is not numeric") from None
        if number in table:
            continue
        odd += sum(v not in (0, 1, UNKNOWN) for v in values)
        table[number] = values
    if odd:
        report.problem(path, f"{odd} value(s) other than 0, 1, 9: valid = 0 there")
    numbers = np.asarray(sorted(table), np.int64)
    values = np.asarray([table[n] for n in numbers.tolist()], np.int64)
    return numbers, (values == 1).astype(np.uint8), np.isin(values, (0, 1)).astype(np.uint8)


def _frame_source(seq_root: str, subject: str, task: str, report: BuildReport) -> FrameSource | None:
    """Frames of one sequence: a folder `Sequences/F001/T1` or members of `Sequences/F001.zip`."""
    subject_dir = layouts.find_child(seq_root, subject, want_dir=True)
    if subject_dir is not None:
        folder = layouts.find_child(subject_dir, task, want_dir=True)
        if folder is not None:
            return FrameSource(folder, numbered_images(layouts.children(folder), folder, report))
    archive = layouts.find_child(seq_root, rf"{subject}\.zip", want_dir=False)
    if archive is not None:
        try:
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist()
                         if len(n.split("/")) >= 2 and n.split("/")[-2].upper() == task]
        except (OSError, zipfile.BadZipFile) as e:
            report.problem(archive, f"unreadable zip ({e})")
            return None
        return FrameSource(archive, numbered_images(names, f"{archive}:{task}", report))
    return None


def list_videos(manual_dir: str, report: BuildReport) -> list[VideoItem]:
    """The coded BP4D sequences under `manual_dir` (or its one sub-folder holding `AUCoding`)."""
    root = layouts.dataset_root(manual_dir, "aucoding")
    if root is None:
        report.problem(manual_dir, "no AUCoding folder here or in a sub-folder")
        return []
    coding = layouts.find_child(root, "aucoding", want_dir=True)
    occ = layouts.find_child(coding, "au_occ", want_dir=True) or coding
    seq_root = layouts.find_child(root, r"sequences.*", want_dir=True)
    if seq_root is None:
        report.problem(root, "no Sequences folder")
        return []
    items = []
    for name in layouts.children(occ):
        path = os.path.join(occ, name)
        if not name.lower().endswith(".csv"):
            continue
        m = re.fullmatch(r"([FM]\d{3})_(T\d+)\.csv", name, re.IGNORECASE)
        if m is None:
            report.problem(path, "not named SUBJECT_TASK.csv (e.g. F001_T1.csv): skipped")
            continue
        subject, task = m.group(1).upper(), m.group(2).upper()
        if subject not in PART_OF:
            report.problem(path, f"{subject} is in none of the DATA.md parts: skipped")
            continue
        try:
            numbers, labels, valid = read_occurrence_csv(path, report)
        except (ValueError, OSError) as e:
            report.problem(path, f"{e}: skipped")
            continue
        source = _frame_source(seq_root, subject, task, report)
        if source is None or not source.images:
            report.problem(path, f"no frames found for {subject}/{task} under {seq_root}: skipped")
            continue
        have = {n for n, _ in source.images}
        extra = len(have - set(numbers.tolist()))
        report.count("frames_without_labels", extra)
        items.append(VideoItem(subject=subject, video=f"{subject}_{task}", source=source,
                               split=PART_OF[subject], numbers=numbers, labels=labels, valid=valid))
    return items


class Bp4d(VideoClipBuilder):
    """BP4D clips (see module docstring); build with `auvmae build-data --dataset=bp4d`."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Face crops rotated so the eyes are level (align_faces)."}
    BUILDER_CONFIGS = [Bp4dConfig()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    BP4D-Spontaneous is licensed by its owners (https://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html).
    Place in the manual dir (or in one folder inside it) the folders as they ship:
      AUCoding/AU_OCC/F001_T1.csv ...          (occurrence labels, one CSV per sequence)
      Sequences/F001/T1/0034.jpg ...           (or Sequences(2D+3D)/..., or Sequences/F001.zip)
    """
    aus = AUS
    minority_aus = MINORITY_AUS

    def _info(self) -> tfds.core.DatasetInfo:
        return self._au_clip_info(__doc__, "https://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html")

    def _list_videos(self, manual_dir: str, report: BuildReport) -> list[VideoItem]:
        return list_videos(manual_dir, report)
