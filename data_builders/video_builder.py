"""The machinery shared by the real-data builders (DISFA, BP4D, face-video corpora).

A builder lists its videos (`VideoItem`: subject, video id, where the frames are,
and for labelled data the frame numbers with their labels), says which split each
goes to, and this module does the rest:

- face crops once per video (`frames.face_crops`), then clips of `clip_length`
  frames with `clip_stride` (`clip_examples`);
- locally: every video is prepared first, in `num_workers` processes (spawned),
  into a temporary cache, so that the report is complete, failed videos are left
  out and a split left empty is not declared (TFDS fails on an empty split); the
  split generators then only cut clips from the cache (a part and its `_aug` split
  share one preparation);
- with Apache Beam (a `beam_runner` or `beam_options` in the `DownloadConfig`),
  `_generate_examples` returns a `PTransform` that prepares and cuts each video on
  the workers; each writes its video's report beside the output, and the builder
  merges them into `report` once the pipeline has run (and counts Beam metrics).

Records are written by `clips.DeterministicExampleWriter`: a re-run with the same
inputs and config writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_builders import clips, frames
from data_builders.report import BuildReport

log = logging.getLogger("auvmae")


@dataclasses.dataclass(eq=False, kw_only=True)
class VideoBuildConfig(tfds.core.BuilderConfig):
    """Crop size, clip length and stride, face detection and alignment, JPEG quality.

    `align_faces` (with `detect_faces`) rotates each crop so that the eyes are
    horizontal (`frames.face_crops`). The name is derived: the builder's base name
    plus every value that differs from the defaults, so that builds with other
    parameters coexist in a data_dir.
    """

    name: str = dataclasses.field(default="", init=False)
    image_size: int = 224
    clip_length: int = 128
    clip_stride: int | None = None
    detect_faces: bool = True
    jpeg_quality: int = 90
    align_faces: bool = True

    def base_name(self) -> str:
        return "default"

    def __post_init__(self):
        stride = self.clip_length if self.clip_stride is None else self.clip_stride
        clips.clip_starts(1, self.clip_length, stride)  # validates the stride
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        parts = [self.base_name()]
        if self.image_size != defaults["image_size"]:
            parts.append(f"s{self.image_size}")
        if self.clip_length != defaults["clip_length"]:
            parts.append(f"t{self.clip_length}")
        if stride != self.clip_length:
            parts.append(f"stride{stride}")
        if not self.detect_faces:
            parts.append("nodetect")
        elif not self.align_faces:
            parts.append("noalign")
        if self.jpeg_quality != defaults["jpeg_quality"]:
            parts.append(f"q{self.jpeg_quality}")
        self.clip_stride = stride
        self.name = "_".join(parts)
        if not self.description:
            self.description = f"config {self.name}"

    def as_dict(self) -> dict:
        keys = [f.name for f in dataclasses.fields(VideoBuildConfig) if f.name != "name"]
        keys += [f.name for f in dataclasses.fields(self) if f.name not in keys
                 and f.name not in {g.name for g in dataclasses.fields(tfds.core.BuilderConfig)}]
        return {k: getattr(self, k) for k in keys}


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One video to build.

    `numbers`: the labelled frame numbers `[F]` (sorted) with `labels`/`valid`
    `[F, N]` uint8; `None` for unlabelled videos (every frame is used).
    """

    subject: str
    video: str
    source: frames.FrameSource
    split: str = "train"
    numbers: np.ndarray | None = None
    labels: np.ndarray | None = None
    valid: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ClipParams:
    """What the workers need to prepare and cut a video (picklable, no builder)."""

    image_size: int
    detect: bool
    jpeg_quality: int
    clip_length: int
    clip_stride: int
    minority_columns: tuple[int, ...] = ()
    align: bool = True


# ---------------------------------------------------------------------------- pure steps


def final_valid(item: VideoItem, available: Sequence[int]) -> np.ndarray:
    """`item.valid` with the rows of frames that have no image set to 0."""
    has = np.isin(item.numbers, np.fromiter(available, np.int64))
    return item.valid * has[:, None].astype(item.valid.dtype)


def segments(numbers: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index ranges of the runs of consecutive frame numbers."""
    if len(numbers) == 0:
        return []
    cuts = np.flatnonzero(np.diff(numbers) != 1) + 1
    bounds = [0, *cuts.tolist(), len(numbers)]
    return list(zip(bounds[:-1], bounds[1:]))


def has_minority_clips(item: VideoItem, available: Sequence[int], params: ClipParams) -> bool:
    valid = final_valid(item, available)
    return any(clips.minority_spans(item.labels[lo:hi], valid[lo:hi], params.minority_columns)
               for lo, hi in segments(item.numbers))


def _fill_missing(numbers: np.ndarray, jpegs: dict[int, bytes]) -> list[bytes]:
    """The image of each number: its own, else the previous one that exists, else the next."""
    out: list[bytes | None] = []
    last = None
    for n in numbers.tolist():
        last = jpegs.get(n, last)
        out.append(last)
    first = next(b for b in out if b is not None)
    return [first if b is None else b for b in out]


def clip_examples(item: VideoItem, jpegs: dict[int, bytes], params: ClipParams,
                  aug: bool = False) -> Iterator[tuple[str, dict]]:
    """(key, record) of every clip of one video, or of its minority-AU clips if `aug`.

    Labelled: clips follow each run of consecutive labelled frames; a frame without
    image repeats the previous image with `valid = 0`; the last clip of a run is
    padded (`valid = 0`). Unlabelled: clips over all decoded frames, the last one
    ending at the last frame (padded only if the video is shorter than a clip).
    """
    t = params.clip_length
    if item.numbers is None:
        numbers = sorted(jpegs)
        n = len(numbers)
        starts = clips.clip_starts(n, t, params.clip_stride)
        if n >= t:
            starts = sorted({min(s, n - t) for s in starts})
        for s in starts:
            f = [jpegs[k] for k in numbers[s:s + t]]
            f = f + [f[-1]] * (t - len(f))
            yield f"{item.video}_{numbers[s]:06d}", {
                "frames": np.array(f, dtype=object), "subject": item.subject, "video": item.video,
                "start_frame": np.int32(numbers[s])}
        return
    valid = final_valid(item, jpegs)
    images = _fill_missing(item.numbers, jpegs)
    for lo, hi in segments(item.numbers):
        labels, val = item.labels[lo:hi], valid[lo:hi]
        spans = clips.minority_spans(labels, val, params.minority_columns) if aug else None
        if aug and not spans:
            continue
        for a, b in clips.iter_clips(hi - lo, t, params.clip_stride, spans=spans):
            f, lab, v = clips.pad_clip(images[lo + a:lo + b], labels[a:b], val[a:b], t)
            start = int(item.numbers[lo + a])
            yield f"{item.video}_{'aug' if aug else ''}{start:06d}", {
                "frames": np.array(f, dtype=object), "labels": lab, "valid": v,
                "subject": item.subject, "video": item.video, "start_frame": np.int32(start)}


@dataclasses.dataclass
class Prepared:
    """A prepared video: the numbers of its frames with a crop (labelled videos only: kept
    small for corpora of 0.5M unlabelled videos), or why it was skipped."""

    available: np.ndarray | None
    report: BuildReport
    skipped: str | None = None


def prepare(item: VideoItem, params: ClipParams, cache_path: str | None = None) -> tuple[Prepared, dict]:
    """Face crops of one video (written to `cache_path` if given); never raises for bad data."""
    report = BuildReport()
    try:
        jpegs = frames.face_crops(item.source, None if item.numbers is None else item.numbers.tolist(),
                                  image_size=params.image_size, detect=params.detect,
                                  jpeg_quality=params.jpeg_quality, report=report, align=params.align)
    except frames.SkipVideo as e:
        return Prepared(None, report, str(e)), {}
    except Exception as e:  # noqa: BLE001  (a decoder or codec bug on one file must not stop the build)
        return Prepared(None, report, f"failed: {type(e).__name__}: {' '.join(str(e).split())}"), {}
    if cache_path:
        with open(cache_path, "wb") as f:
            pickle.dump(jpegs, f, protocol=pickle.HIGHEST_PROTOCOL)
    available = None if item.numbers is None else np.asarray(sorted(jpegs), np.int64)
    return Prepared(available, report), jpegs


def _prepare_to_cache(args) -> Prepared:
    item, params, path = args
    return prepare(item, params, path)[0]


def video_report(item: VideoItem, prepared: Prepared) -> BuildReport:
    """What one prepared video adds to the build report: its problems, skipped or missing frames."""
    report = BuildReport()
    report.merge(prepared.report)
    if prepared.skipped:
        report.problem(item.source.path, f"skipped: {prepared.skipped}")
        report.count("videos_skipped")
        return report
    report.count("videos_built")
    if item.numbers is not None:
        missing = np.setdiff1d(item.numbers, prepared.available)
        if len(missing):
            report.problem(item.source.path, f"{len(missing)} labelled frame(s) without image "
                           f"({_ranges(missing)}): previous image used, valid = 0")
            report.count("frames_missing", len(missing))
    return report


def _beam_examples(item: VideoItem, params: ClipParams, aug: bool, reports_dir: str):
    """Beam worker: prepare one video and yield its clips. Its report goes to `reports_dir` (once,
    from the non-augmented pass), where the builder collects all of them after the pipeline."""
    import apache_beam as beam

    from auvmae_jax import paths

    prepared, jpegs = prepare(item, params)
    if not aug:
        report = video_report(item, prepared)
        for p in report.problems:
            log.warning("%s", p)
        name = hashlib.sha1(f"{item.split}/{item.video}/{item.source.path}".encode()).hexdigest()
        paths.write_json(paths.join(reports_dir, f"{name}.json"), report.to_json())
        beam.metrics.Metrics.counter("auvmae", "videos_skipped" if prepared.skipped else "videos_built").inc()
    if not prepared.skipped:
        yield from clip_examples(item, jpegs, params, aug)


# ---------------------------------------------------------------------------- builder


class VideoClipBuilder(tfds.core.GeneratorBasedBuilder):
    """Base of the real-data builders: subclasses list their videos (`_list_videos`).

    Set `num_workers` on an instance to prepare videos in that many processes.
    After `download_and_prepare`, `report` holds what was skipped and counted.
    """

    num_workers: int = 1
    minority_aus: tuple[int, ...] = ()
    aus: tuple[int, ...] = ()

    def __init__(self, *, file_format=None, **kwargs):
        """As tfds's, but a new build without `file_format` writes ArrayRecord, not TFRecord:
        training reads records at random (`tfds build` with TensorFlow passes none)."""
        super().__init__(file_format=file_format, **kwargs)
        if file_format is None and not self.is_prepared():
            self.info.set_file_format("array_record", override=True)

    def _list_videos(self, manual_dir: str, report: BuildReport) -> list[VideoItem]:
        raise NotImplementedError

    def _au_clip_info(self, description: str, homepage: str, **metadata) -> tfds.core.DatasetInfo:
        """`_info` of a labelled builder: the shared AU clip record schema, its AUs and config."""
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=clips.au_clip_features(cfg.clip_length, len(self.aus)),
            metadata=tfds.core.MetadataDict(aus=list(self.aus), minority_aus=list(self.minority_aus),
                                            **metadata, config=cfg.as_dict()),
            homepage=homepage,
        )

    def _example_writer(self):
        return clips.DeterministicExampleWriter(file_format=self.info.file_format)

    def _params(self) -> ClipParams:
        cfg = self.builder_config
        return ClipParams(cfg.image_size, cfg.detect_faces, cfg.jpeg_quality, cfg.clip_length,
                          cfg.clip_stride, tuple(self.aus.index(a) for a in self.minority_aus),
                          align=cfg.align_faces)

    def _generate_splits(self, dl_manager, download_config):
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        self._cache_dir = None
        if not self._use_beam:  # beside the output: crops need as much disk as the records
            os.makedirs(self._data_dir_root, exist_ok=True)
            self._cache_dir = tempfile.mkdtemp(prefix=".auvmae_crops_", dir=self._data_dir_root)
        else:  # where every Beam worker can write (a gs:// data_dir on a cluster)
            self._reports_dir = os.path.join(self._data_dir_root, f".auvmae_reports_{uuid.uuid4().hex}")
        try:
            split_infos = super()._generate_splits(dl_manager, download_config)
            if self._use_beam:
                self._collect_beam_reports()
            return split_infos
        finally:
            if self._cache_dir:
                shutil.rmtree(self._cache_dir, ignore_errors=True)
            if self._use_beam and epath.Path(self._reports_dir).exists():
                epath.Path(self._reports_dir).rmtree()

    def _collect_beam_reports(self) -> None:
        """Merge the per-video reports the Beam workers wrote: the summary then counts them too."""
        for f in sorted(epath.Path(self._reports_dir).glob("*.json")):
            self.report.merge(BuildReport.from_json(json.loads(f.read_text())))

    def _split_generators(self, dl_manager):
        from auvmae_jax.errors import UserError

        self.report = BuildReport()
        manual_dir = os.fspath(dl_manager.manual_dir)
        items = self._list_videos(manual_dir, self.report)
        if not items:
            log.warning("%s", self.report.summary())
            raise UserError(f"{manual_dir}: no video could be built ({len(self.report.problems)} "
                            "problem(s), listed above)")
        params = self._params()
        if params.detect:
            frames._detector("opencv")  # no OpenCV: one clear error now, not one per video
        names = sorted({it.split for it in items})
        if self._use_beam:  # splits from the labels alone: a split whose videos all fail fails the build
            splits = {}
            for s in names:
                part = [it for it in items if it.split == s]
                splits[s] = self._generate_examples(part, params, False)
                aug = [it for it in part if params.minority_columns
                       and has_minority_clips(it, it.numbers.tolist(), params)]
                if aug:
                    splits[f"{s}_aug"] = self._generate_examples(aug, params, True)
            return splits
        prepared = self._prepare_all(items, params)
        self._last_use = set()  # cache files no later split reads: deleted once read
        built = [(it, p) for it, p in zip(items, prepared) if p.skipped is None]
        if not built:
            log.warning("%s", self.report.summary())
            raise UserError(f"{manual_dir}: no video could be built ({len(self.report.problems)} "
                            "problem(s), listed above)")
        splits = {}
        for s in names:
            part = [(i, it) for i, (it, p) in enumerate(zip(items, prepared))
                    if it.split == s and p.skipped is None]
            aug = [(i, it) for i, it in part if params.minority_columns
                   and has_minority_clips(it, prepared[i].available, params)]
            if part:  # TFDS writes the splits one after the other, in this order
                self._last_use.update(i for i, _ in part)
                splits[s] = self._generate_examples(part, params, False)
            if aug:
                self._last_use.difference_update(i for i, _ in aug)
                splits[f"{s}_aug"] = self._generate_examples(aug, params, True)
        return splits

    def _prepare_all(self, items: list[VideoItem], params: ClipParams) -> list[Prepared]:
        jobs = [(it, params, os.path.join(self._cache_dir, f"{i:07d}.pkl")) for i, it in enumerate(items)]
        if self.num_workers > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
            with ctx.Pool(min(self.num_workers, len(jobs))) as pool:
                prepared = list(pool.imap(_prepare_to_cache, jobs))
        else:
            prepared = [_prepare_to_cache(j) for j in jobs]
        for it, p in zip(items, prepared):
            self.report.merge(video_report(it, p))
        return prepared

    def _generate_examples(self, items, params: ClipParams, aug: bool):
        """A Beam `PTransform` (items are `VideoItem`s) or a generator over the cache."""
        if self._use_beam:
            import apache_beam as beam

            return beam.Create(items) | beam.FlatMap(_beam_examples, params=params, aug=aug,
                                                     reports_dir=self._reports_dir)
        return self._cached_examples(items, params, aug)

    def _cached_examples(self, items, params, aug):
        for i, item in items:
            path = os.path.join(self._cache_dir, f"{i:07d}.pkl")
            with open(path, "rb") as f:
                jpegs = pickle.load(f)
            if aug or i in self._last_use:
                os.remove(path)
            yield from clip_examples(item, jpegs, params, aug)


def _ranges(numbers: np.ndarray, limit: int = 5) -> str:
    """'12-15, 40' for sorted frame numbers (first `limit` runs)."""
    runs = [(int(numbers[lo]), int(numbers[hi - 1])) for lo, hi in segments(np.asarray(numbers))]
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:limit])
    return text + (", ..." if len(runs) > limit else "")
