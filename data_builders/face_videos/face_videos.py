"""`face_videos`: unlabelled face-video clips for pre-training, one config per corpus.

Each config reads its corpus as shipped (DATA.md, "Face-video corpora"), from
`manual_dir/<corpus folder>` if that exists, else from `manual_dir` itself:

| config | corpus folder | layout read |
| --- | --- | --- |
| `voxceleb2` | `voxceleb2`, `vox2` | `{dev,test}/mp4/id00012/21Uxsk56VDQ/00001.mp4` (`mp4/` may be missing) |
| `celebv_hq` | `celebv_hq`, `celebvhq`, `celebv-hq` | every `*.mp4` below the root (`<youtube id>_<n>.mp4`) |
| `faceforensics` | `faceforensics`, `ff++` | `original_sequences/youtube/c23/videos/000.mp4` (c40, raw) |
| `vfhq` | `vfhq` | one folder of PNG/JPEG frames per clip (`Clip+<youtube id>+P0+...`) |
| `mead` | `mead` | `M003/video/front/angry/level_1/001.mp4` (`view`: front by default) |

VFHQ's per-clip meta files (face boxes) are not read (their format is not checked
here): the faces are found by the detector, as for the other corpora, so build VFHQ
with detection (the default; `--no-detect` would resize its whole frames). MEAD
ships one tar per subject and view: archives (`M003.tar`, `M003/video.tar`,
`M003/video/front.tar`, ...) are not read but reported, to be extracted first.
Subject ids: the VoxCeleb2 speaker id, the CelebV-HQ and VFHQ YouTube id, the
FaceForensics++ sequence number, the MEAD actor.

Every video is face-cropped (the face track, smoothed) and cut into clips of
`clip_length` frames with `clip_stride`; the last clip ends at the video's last
frame (a video shorter than a clip is padded by repeating its last frame). One
split, `train`. The paper's joint corpus is a weighted mixture of these configs,
made at read time (`auvmae_jax.data_mixture`). Generation runs on Apache Beam when
a runner is given (`auvmae build-data --beam_pipeline_options=...`), else in
`num_workers` local processes.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from data_builders import layouts
from data_builders.frames import IMAGE_SUFFIXES, FrameSource, numbered_images
from data_builders.report import BuildReport
from data_builders.video_builder import VideoBuildConfig, VideoClipBuilder, VideoItem

CORPORA = ("voxceleb2", "celebv_hq", "faceforensics", "vfhq", "mead")
_FOLDERS = {"voxceleb2": r"voxceleb2|vox2|voxceleb", "celebv_hq": r"celebv[_-]?hq",
            "faceforensics": r"faceforensics(\+\+|pp)?|ff(\+\+|pp)", "vfhq": r"vfhq", "mead": r"mead"}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ARCHIVE = r".+\.(tar|tar\.gz|tgz|zip)"


@dataclasses.dataclass(eq=False, kw_only=True)
class FaceVideosConfig(VideoBuildConfig):
    """`corpus` (one of `CORPORA`), MEAD `view`, FaceForensics++ `compression`."""

    corpus: str = "voxceleb2"
    clip_length: int = 64
    view: str = "front"
    compression: str = "c23"

    def base_name(self) -> str:
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        name = self.corpus
        if self.corpus == "mead" and self.view != "front":
            name += f"_{self.view}"
        if self.corpus == "faceforensics" and self.compression != "c23":
            name += f"_{self.compression}"
        return name


def _videos_in(folder: str) -> list[str]:
    return [n for n in layouts.children(folder)
            if os.path.splitext(n)[1].lower() in VIDEO_SUFFIXES and os.path.isfile(os.path.join(folder, n))]


def _voxceleb2(root: str, cfg: FaceVideosConfig, report: BuildReport) -> list[VideoItem]:
    items = []
    tops = [p for p in (layouts.find_child(root, s, want_dir=True) for s in ("dev", "test")) if p] or [root]
    for top in tops:
        mp4 = layouts.find_child(top, "mp4", want_dir=True) or top
        for speaker in layouts.children(mp4):
            folder = os.path.join(mp4, speaker)
            if not os.path.isdir(folder):
                continue
            if not re.fullmatch(r"id\d+", speaker):
                report.problem(folder, "not a speaker folder (expected id00012): skipped")
                continue
            for yt in layouts.children(folder):
                for name in _videos_in(os.path.join(folder, yt)):
                    stem = os.path.splitext(name)[0]
                    items.append(VideoItem(speaker, f"{speaker}_{yt}_{stem}",
                                           FrameSource(os.path.join(folder, yt, name))))
    return items


def _celebv_hq(root: str, cfg: FaceVideosConfig, report: BuildReport) -> list[VideoItem]:
    items = []
    for folder, dirs, names in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(names):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in VIDEO_SUFFIXES:
                m = re.fullmatch(r"(.+)_\d+", stem)
                subject = m.group(1) if m else stem
                items.append(VideoItem(subject, stem, FrameSource(os.path.join(folder, name))))
    return items


def _faceforensics(root: str, cfg: FaceVideosConfig, report: BuildReport) -> list[VideoItem]:
    folder = root
    for part in ("original_sequences", "youtube", cfg.compression, "videos"):
        folder = layouts.find_child(folder, re.escape(part), want_dir=True)
        if folder is None:
            report.problem(root, f"no original_sequences/youtube/{cfg.compression}/videos folder")
            return []
    return [VideoItem(os.path.splitext(n)[0], f"ffpp_{os.path.splitext(n)[0]}",
                      FrameSource(os.path.join(folder, n))) for n in _videos_in(folder)]


def _vfhq(root: str, cfg: FaceVideosConfig, report: BuildReport) -> list[VideoItem]:
    items = []
    for folder, dirs, names in sorted(os.walk(root)):
        dirs.sort()
        if not any(os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES for n in names):
            continue
        clip = os.path.basename(folder)
        images = numbered_images(names, folder, report)
        if not images:
            continue
        parts = clip.split("+")
        subject = parts[1] if len(parts) > 1 and parts[0].lower() == "clip" else clip
        items.append(VideoItem(subject, clip, FrameSource(folder, images)))
    return items


def _report_archives(folder: str, report: BuildReport) -> None:
    for name in layouts.children(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and re.fullmatch(ARCHIVE, name, re.IGNORECASE):
            report.problem(path, f"an archive, not read: extract it here (e.g. tar xf {name}) to build "
                           "the videos in it: skipped")


def _mead(root: str, cfg: FaceVideosConfig, report: BuildReport) -> list[VideoItem]:
    items = []
    _report_archives(root, report)  # M003.tar
    for actor in layouts.children(root):
        folder = os.path.join(root, actor)
        if not os.path.isdir(folder):
            continue
        if not re.fullmatch(r"[MW]\d{3}", actor):
            report.problem(folder, "not an actor folder (expected M003 or W009): skipped")
            continue
        _report_archives(folder, report)  # M003/video.tar
        video = layouts.find_child(folder, "video", want_dir=True)
        if video is not None:
            _report_archives(video, report)  # M003/video/front.tar
        view = layouts.find_child(video or folder, re.escape(cfg.view), want_dir=True)
        if view is None:
            report.problem(folder, f"no video/{cfg.view} folder: skipped")
            continue
        for emotion in layouts.children(view):
            for level in layouts.children(os.path.join(view, emotion)):
                where = os.path.join(view, emotion, level)
                for name in _videos_in(where):
                    stem = os.path.splitext(name)[0]
                    items.append(VideoItem(actor, f"{actor}_{cfg.view}_{emotion}_{level}_{stem}",
                                           FrameSource(os.path.join(where, name))))
    return items


LISTERS = {"voxceleb2": _voxceleb2, "celebv_hq": _celebv_hq, "faceforensics": _faceforensics,
           "vfhq": _vfhq, "mead": _mead}


def list_videos(manual_dir: str, cfg: FaceVideosConfig, report: BuildReport) -> list[VideoItem]:
    """The videos of `cfg.corpus` under `manual_dir/<corpus folder>` or `manual_dir`."""
    root = layouts.find_child(manual_dir, _FOLDERS[cfg.corpus], want_dir=True) or manual_dir
    items = LISTERS[cfg.corpus](root, cfg, report)
    if not items:
        report.problem(root, f"no {cfg.corpus} video found in the layout of DATA.md")
    else:
        report.note(f"{cfg.corpus}: {len(items)} video(s) of {len({it.subject for it in items})} subject(s) "
                    f"under {root}")
    return items


class FaceVideos(VideoClipBuilder):
    """Unlabelled face clips of one corpus per config (see module docstring)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Face crops rotated so the eyes are level (align_faces)."}
    BUILDER_CONFIGS = [FaceVideosConfig(corpus=c) for c in CORPORA]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    The corpora are licensed or downloaded by their own scripts. Place each as it ships
    in a folder of the manual dir (or point the manual dir at the one corpus):
      voxceleb2/dev/mp4/id00012/21Uxsk56VDQ/00001.mp4 ...
      celebv_hq/<youtube id>_<n>.mp4 ...
      faceforensics/original_sequences/youtube/c23/videos/000.mp4 ...
      vfhq/<clip name>/00000000.png ...   (one folder of frames per clip)
      mead/M003/video/front/angry/level_1/001.mp4 ...
    """

    def _info(self) -> tfds.core.DatasetInfo:
        t = self.builder_config.clip_length
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "frames": tfds.features.Tensor(shape=(t,), dtype=np.object_, doc="JPEG bytes per frame"),
                "subject": tfds.features.Text(doc="speaker / actor / source video id"),
                "video": tfds.features.Text(doc="video id"),
                "start_frame": tfds.features.Scalar(dtype=np.int32, doc="number of the first frame (from 1)"),
            }),
            metadata=tfds.core.MetadataDict(corpus=self.builder_config.corpus,
                                            config=self.builder_config.as_dict()),
        )

    def _list_videos(self, manual_dir: str, report: BuildReport) -> list[VideoItem]:
        return list_videos(manual_dir, self.builder_config, report)
