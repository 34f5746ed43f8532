"""`bp4d`: BP4D-Spontaneous sequences as face-cropped clips with AU occurrence labels.

Reads the layout the owners ship (DATA.md, "BP4D"):

- `AUCoding/AU_OCC/F001_T1.csv`: a header row; the first column is the frame number,
  then one column per AU, named by its number. Columns are found by header name,
  never by position; the 12 evaluated AUs (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
  are the label columns. 0 = absent, 1 = present, 9 = not coded (`valid = 0`); any
  other value, an empty or non-numeric cell is also `valid = 0` for that cell only,
  and reported; a row whose frame number is not a number is dropped and reported.
  A missing AU column is `valid = 0`.
- Frames: one image per frame under `Sequences/F001/T1/` (the folder may be named
  `Sequences(2D+3D)` or anything starting with `Sequences`, and a subject may ship
  as `F001.zip` holding `F001/T1/...` or `T1/...`). Image names are the frame
  number, zero-padded or not (`0034.jpg`, `34.jpg`): matched on the integer value.

Only the coded frames are used: clips follow each run of consecutive coded frame
numbers (`start_frame` is the CSV's number). A coded frame without an image gets the
previous image with `valid = 0`, and is reported with counts per sequence. Label
files with odd names are reported; empty label files, subjects outside the DATA.md
parts, sequences without frames and sequences with frames but no label file are
reported and skipped (counted in `videos_skipped`). The summary says which layout
was found: the Sequences folder, folders or zips, padded or plain image names.

Splits: `part1..3` (DATA.md subject parts), `part1_aug..3_aug` (minority-AU clips of
SPEC §3: AUs 1, 2, 4, 15, 23, 24).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
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
UNUSABLE = -1  # an empty or non-numeric cell: valid = 0

log = logging.getLogger("auvmae")


@dataclasses.dataclass(eq=False, kw_only=True)
class Bp4dConfig(VideoBuildConfig):
    """Crop size, clip length and stride, detection, JPEG quality (name derived)."""


def read_occurrence_csv(path: str, report: BuildReport, max_lines: int = 5):
    """(numbers `[F]`, labels, valid `[F, 12]` uint8) of one AU_OCC file; ValueError if unusable.

    Columns are found by their header names (DATA.md): the frame number's is `0` (the first
    column where no header cell is `0`), each AU's its number. Commas separate the cells;
    a header without one but with tabs or semicolons sets those instead. A cell that is
    empty, not a number, missing or not 0/1/9 is `valid = 0` for that frame and AU only; a
    row whose frame number is not a number is dropped; a frame listed twice keeps the cells
    both rows agree on and is `valid = 0` where they differ. All are reported (the first
    `max_lines` rows) and counted (`label_cells_unusable`, `label_rows_dropped`,
    `label_rows_repeated`).
    """
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        text = f.read()
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = next((d for d in (",", "\t", ";") if d in first), ",")
    rows = [(k, r) for k, r in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1)
            if any(c.strip() for c in r)]
    if not rows:
        raise ValueError("empty label file")
    header, body = [c.strip() for c in rows[0][1]], rows[1:]
    frame_col = header.index("0") if "0" in header else 0
    columns = {}
    for i, name in enumerate(header):
        number = _integer(name)
        if i != frame_col and number is not None:
            columns.setdefault(number, i)
    named = [n for n in map(_integer, header) if n is not None]
    if len(named) != len(set(named)):
        raise ValueError(f"no header row: the first row {','.join(header[:8])!r}... repeats its numbers, "
                         "so it holds labels, not AU numbers as column names")
    if not body:
        raise ValueError("no label rows under the header")
    absent = [au for au in AUS if au not in columns]
    if len(absent) == len(AUS):
        raise ValueError(f"no AU column among {header[:6]}...: expected AU numbers as column names"
                         + (" (one column: the file is not comma-, tab- or semicolon-separated)"
                            if len(header) == 1 else ""))
    if absent:
        report.problem(path, f"no column for AU {', '.join(map(str, absent))}: valid = 0 there")
    table = {}
    dropped, unusable, odd = [], [], 0
    repeated: dict[int, None] = {}  # frames listed again with other labels, in file order
    for k, row in body:
        number = _integer(row[frame_col]) if frame_col < len(row) else None
        if number is None:
            dropped.append(f"line {k} {','.join(row)[:40]!r}: frame number is not a number: row dropped")
            continue
        values = []
        for au in AUS:
            cell = row[columns[au]].strip() if au in columns and columns[au] < len(row) else None
            value = UNKNOWN if au not in columns else _integer(cell) if cell is not None else None
            if value is None:
                unusable.append(f"line {k} (frame {number}) AU {au}: "
                                f"{'no cell' if cell is None else repr(cell[:10])}")
                value = UNUSABLE
            values.append(value)
        if number in table:
            if values != table[number]:
                repeated[number] = None
                table[number] = [a if a == b else UNUSABLE for a, b in zip(table[number], values)]
            continue
        odd += sum(v not in (0, 1, UNKNOWN, UNUSABLE) for v in values)
        table[number] = values
    for reason in dropped[:max_lines]:
        report.problem(path, reason)
    if len(dropped) > max_lines:
        report.problem(path, f"... and {len(dropped) - max_lines} more row(s) dropped")
    if unusable:
        more = f", and {len(unusable) - max_lines} more" if len(unusable) > max_lines else ""
        shown = "; ".join(unusable[:max_lines])
        report.problem(path, f"{len(unusable)} cell(s) empty or not a number ({shown}{more}): "
                       "valid = 0 there")
    if repeated:
        shown = ", ".join(map(str, list(repeated)[:max_lines]))
        shown += ", ..." if len(repeated) > max_lines else ""
        report.problem(path, f"{len(repeated)} frame(s) listed again with other labels ({shown}): "
                       "valid = 0 where the rows differ")
    report.count("label_rows_dropped", len(dropped))
    report.count("label_cells_unusable", len(unusable))
    report.count("label_rows_repeated", len(repeated))
    if odd:
        report.problem(path, f"{odd} value(s) other than 0, 1, 9: valid = 0 there")
    if not table:
        raise ValueError("no row with a numeric frame number")
    numbers = np.asarray(sorted(table), np.int64)
    values = np.asarray([table[n] for n in numbers.tolist()], np.int64)
    return numbers, (values == 1).astype(np.uint8), np.isin(values, (0, 1)).astype(np.uint8)


def _integer(text: str) -> int | None:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class _Frames:
    """The image names of one sequence: in a folder, or members of a subject's zip."""

    path: str  # the sequence folder, or the zip
    names: tuple[str, ...]
    zipped: bool


def sequence_index(seq_root: str, report: BuildReport) -> dict[tuple[str, str], _Frames]:
    """(subject, task) -> its image names, for every `F001/T1` folder and every task in `F001.zip`
    (a folder wins over a zip). Each zip is read once."""
    found: dict[tuple[str, str], _Frames] = {}
    zips = []
    for name in layouts.children(seq_root):
        path = os.path.join(seq_root, name)
        if os.path.isdir(path) and re.fullmatch(r"[FM]\d{3}", name, re.IGNORECASE):
            for task in layouts.children(path):
                folder = os.path.join(path, task)
                if os.path.isdir(folder) and re.fullmatch(r"T\d+", task, re.IGNORECASE):
                    names = tuple(layouts.children(folder))
                    found[(name.upper(), task.upper())] = _Frames(folder, names, False)
        elif re.fullmatch(r"[FM]\d{3}\.zip", name, re.IGNORECASE) and os.path.isfile(path):
            zips.append((name[:4].upper(), path))
    for subject, archive in zips:
        try:
            with zipfile.ZipFile(archive) as z:
                members = z.namelist()
        except (OSError, zipfile.BadZipFile) as e:
            report.problem(archive, f"unreadable zip ({e})")
            continue
        tasks: dict[str, list[str]] = {}
        for n in members:
            parts = n.split("/")
            if len(parts) >= 2 and re.fullmatch(r"T\d+", parts[-2], re.IGNORECASE) and parts[-1]:
                tasks.setdefault(parts[-2].upper(), []).append(n)
        for task, names in tasks.items():
            found.setdefault((subject, task), _Frames(archive, tuple(names), True))
    return found


def _naming(images: tuple[tuple[int, str], ...]) -> str:
    """'padded' (`0034.jpg`), 'plain' (`34.jpg`) or 'mixed': how a sequence names its images."""
    stems = [os.path.splitext(os.path.basename(n))[0] for _, n in images]
    width = max((len(s) for s in stems if len(s) > 1 and s.startswith("0")), default=0)
    if not width:
        return "plain"
    return "mixed" if any(len(s) < width for s in stems) else "padded"


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
    index = sequence_index(seq_root, report)
    items, labelled, layout = [], set(), {"folders": 0, "zips": 0, "padded": 0, "plain": 0, "mixed": 0}
    for name in layouts.children(occ):
        path = os.path.join(occ, name)
        if not name.lower().endswith(".csv"):
            continue
        m = re.fullmatch(r"([FM]\d{3})_(T\d+)\.csv", name, re.IGNORECASE)
        if m is None:
            report.problem(path, "not named SUBJECT_TASK.csv (e.g. F001_T1.csv): skipped")
            continue
        subject, task = m.group(1).upper(), m.group(2).upper()
        labelled.add((subject, task))
        if subject not in PART_OF:
            report.skip(path, f"{subject} is in none of the DATA.md parts: skipped")
            continue
        try:
            numbers, labels, valid = read_occurrence_csv(path, report)
        except (ValueError, OSError) as e:
            report.skip(path, f"{e}: skipped")
            continue
        frames = index.get((subject, task))
        where = f"{frames.path}:{task}" if frames and frames.zipped else frames.path if frames else ""
        images = numbered_images(frames.names, where, report) if frames else ()
        if not images:
            report.skip(path, f"no frames found for {subject}/{task} under {seq_root}: skipped")
            continue
        layout["zips" if frames.zipped else "folders"] += 1
        layout[_naming(images)] += 1
        have = {n for n, _ in images}
        extra = len(have - set(numbers.tolist()))
        report.count("frames_without_labels", extra)
        items.append(VideoItem(subject=subject, video=f"{subject}_{task}",
                               source=FrameSource(frames.path, images), split=PART_OF[subject],
                               numbers=numbers, labels=labels, valid=valid))
    for (subject, task), frames in sorted(index.items()):
        if (subject, task) not in labelled:
            where = f"{frames.path}:{task}" if frames.zipped else frames.path
            report.skip(where, f"no label file ({os.path.basename(occ)}/{subject}_{task}.csv): skipped")
    note = (f"bp4d: labels in {os.path.relpath(occ, root)}, frames in {os.path.basename(seq_root)}: "
            f"{layout['folders']} sequence folder(s), {layout['zips']} sequence(s) in subject zips; "
            f"image names zero-padded (0034.jpg) in {layout['padded']}, plain (34.jpg) in {layout['plain']}"
            + (f", both in {layout['mixed']}" if layout["mixed"] else ""))
    log.info("%s", note)
    report.note(note)
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
