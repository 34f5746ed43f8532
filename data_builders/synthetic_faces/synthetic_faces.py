"""`synthetic_faces`: procedural AU-labelled face videos in the DATA.md clip schema.

Subjects `S001..` each get an identity and `videos_per_subject` continuous videos
(`S001_V1`, ...) of `frames_per_video` frames; every video is cut into clips of
`clip_length` frames with `clip_stride` (the last one padded, `valid = 0`).

Splits: `part1..3` deal the subjects by `clips.assign_parts` (a stable hash of the
id, round-robin by hash if that leaves a part empty). `part1_aug..3_aug` hold the
minority-AU clips (SPEC §3) of that part's videos, raw: the random flip and crop
of the paper are the training input pipeline's job. The minority AUs here are
`MINORITY_AUS`, the six rarest of the generator (expected active rates 4-8%,
against 8-21% for the others). Splits with no example are left out.

Determinism: everything derives from `np.random.default_rng((seed, subject,
video, stream))`, and records are written by `clips.DeterministicExampleWriter`,
so the same config writes byte-identical shards in any process. Demo size
(24 x 2 x 96 frames at 64x64) builds in about 4 s on one core.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from data_builders import clips
from data_builders.synthetic_faces import render, timeline

MINORITY_AUS = (1, 2, 9, 15, 23, 24)
_IDENTITY, _LABELS, _RENDER = 0, 1, 2  # rng streams


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
    """Dataset size and rendering; the config name is derived from all of them."""

    name: str = dataclasses.field(default="", init=False)
    image_size: int = 64
    clip_length: int = 16
    clip_stride: int | None = None
    num_subjects: int = 24
    videos_per_subject: int = 2
    frames_per_video: int = 96
    seed: int = 0
    jpeg_quality: int = 90

    def __post_init__(self):
        stride = self.clip_length if self.clip_stride is None else self.clip_stride
        clips.clip_starts(1, self.clip_length, stride)  # validates the stride
        self.clip_stride = stride
        self.name = (f"s{self.image_size}_t{self.clip_length}"
                     + (f"_stride{stride}" if stride != self.clip_length else "")
                     + f"_n{self.num_subjects}x{self.videos_per_subject}x{self.frames_per_video}"
                     + f"_seed{self.seed}_q{self.jpeg_quality}")
        if not self.description:
            self.description = f"synthetic faces, config {self.name}"


def subject_id(index: int) -> str:
    return f"S{index + 1:03d}"


def video_intensities(cfg: SyntheticFacesConfig, subject: int, video: int) -> np.ndarray:
    """float32 `[frames_per_video, 14]` AU intensities of one video (cheap: no rendering)."""
    rng = np.random.default_rng((cfg.seed, subject, video, _LABELS))
    return timeline.sample_au_intensities(rng, cfg.frames_per_video)


def render_video(cfg: SyntheticFacesConfig, subject: int, video: int) -> np.ndarray:
    """uint8 `[frames_per_video, S, S, 3]` frames of one video."""
    identity = render.sample_identity(np.random.default_rng((cfg.seed, subject, 0, _IDENTITY)))
    rng = np.random.default_rng((cfg.seed, subject, video, _RENDER))
    return render.render_frames(identity, video_intensities(cfg, subject, video), cfg.image_size, rng)


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
    """Procedural face videos with 14 AU labels per frame (see module docstring)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "AU appearance rises sharply around the label threshold (FACS B)."}
    BUILDER_CONFIGS = [SyntheticFacesConfig()]

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=clips.au_clip_features(cfg.clip_length, len(render.AUS)),
            metadata=tfds.core.MetadataDict(
                aus=list(render.AUS), minority_aus=list(MINORITY_AUS),
                label_threshold=timeline.LABEL_THRESHOLD, config=_config_dict(cfg),
            ),
        )

    def _example_writer(self):
        return clips.DeterministicExampleWriter(file_format=self.info.file_format)

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        parts = clips.assign_parts([subject_id(i) for i in range(cfg.num_subjects)])
        minority = [render.AUS.index(au) for au in MINORITY_AUS]
        self._jpeg_cache = {}  # JPEGs of videos that a `_aug` split will need again
        splits = {}
        for part in clips.PARTS:
            videos = [(i, v) for i in range(cfg.num_subjects) if parts[subject_id(i)] == part
                      for v in range(cfg.videos_per_subject)]
            if not videos or cfg.frames_per_video < 1:
                continue
            spans = {}
            for i, v in videos:
                labels = timeline.labels_from_intensities(video_intensities(cfg, i, v))
                if s := clips.minority_spans(labels, np.ones_like(labels), minority):
                    spans[(i, v)] = s
            splits[part] = self._generate_examples(videos, spans, aug=False)
            if spans:
                splits[f"{part}_aug"] = self._generate_examples(sorted(spans), spans, aug=True)
        return splits

    def _video_jpegs(self, i: int, v: int, keep: bool) -> list[bytes]:
        """JPEG bytes per frame; rendered once when both a part and its `_aug` split need them."""
        if (i, v) in self._jpeg_cache:
            return self._jpeg_cache.pop((i, v))
        cfg = self.builder_config
        jpegs = [clips.encode_jpeg(f, cfg.jpeg_quality) for f in render_video(cfg, i, v)]
        if keep:
            self._jpeg_cache[(i, v)] = jpegs
        return jpegs

    def _generate_examples(self, videos, spans, aug):
        """Yields (key, clip) for each `(subject, video)`: all its clips, or its minority clips if `aug`."""
        cfg = self.builder_config
        for i, v in videos:
            labels = timeline.labels_from_intensities(video_intensities(cfg, i, v))
            valid = np.ones_like(labels)
            frames = self._video_jpegs(i, v, keep=not aug and (i, v) in spans)
            video = f"{subject_id(i)}_V{v + 1}"
            ranges = clips.iter_clips(len(frames), cfg.clip_length, cfg.clip_stride,
                                      spans=spans[(i, v)] if aug else None)
            for lo, hi in ranges:
                f, lab, val = clips.pad_clip(frames[lo:hi], labels[lo:hi], valid[lo:hi], cfg.clip_length)
                yield f"{video}_{'aug' if aug else ''}{lo + 1:06d}", {
                    "frames": np.array(f, dtype=object), "labels": lab, "valid": val,
                    "subject": subject_id(i), "video": video, "start_frame": np.int32(lo + 1),
                }


def _config_dict(cfg: SyntheticFacesConfig) -> dict:
    keys = ("image_size", "clip_length", "clip_stride", "num_subjects", "videos_per_subject",
            "frames_per_video", "seed", "jpeg_quality")
    return {k: getattr(cfg, k) for k in keys}
