"""The machinery shared by the real-data builders (DISFA, BP4D, face-video corpora).

A builder lists its videos (`VideoItem`: subject, video id, where the frames are,
and for labelled data the frame numbers with their labels), says which split each
goes to, and this module does the rest:

- face crops once per video (`frames.face_crops`), then clips of `clip_length`
  frames with `clip_stride` (`clip_examples`);
- every video is prepared first into a temporary cache beside the output, so that
  the report is complete, failed videos are left out and a split left empty is
  not declared (TFDS fails the whole build on a split without examples, and under
  Beam it only finds out inside the pipeline); the split generators then only cut
  clips from the cache (a part and its `_aug` split share one preparation);
- the preparation runs in `num_workers` local processes (spawned), or with Apache
  Beam (a `beam_runner` or `beam_options` in the `DownloadConfig`) as a first Beam
  pipeline of its own, whose workers write each video's crops and report to the
  cache; TFDS's pipeline then cuts the clips from the cache on the workers.

Records are written by `clips.DeterministicExampleWriter`: a re-run with the same
inputs and config writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import pickle
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
    padded (`valid = 0`). Unlabelled: clips over all frames from the first decoded to
    the last, a frame without image (an unreadable file among numbered ones, reported by
    the preparation) repeating the previous image, so that a clip's frames keep their
    spacing in time; the last clip ends at the last frame (padded only if the video is
    shorter than a clip).
    """
    t = params.clip_length
    if item.numbers is None:
        numbers = np.arange(min(jpegs), max(jpegs) + 1)
        images = _fill_missing(numbers, jpegs)
        n = len(numbers)
        starts = clips.clip_starts(n, t, params.clip_stride)
        if n >= t:
            starts = sorted({min(s, n - t) for s in starts})
        for s in starts:
            f = images[s:s + t]
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

    def to_json(self) -> dict:
        available = None if self.available is None else self.available.tolist()
        return {"available": available, "report": self.report.to_json(), "skipped": self.skipped}

    @classmethod
    def from_json(cls, d: dict) -> Prepared:
        available = None if d["available"] is None else np.asarray(d["available"], np.int64)
        return cls(available, BuildReport.from_json(d["report"]), d["skipped"])


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
        epath.Path(cache_path).write_bytes(pickle.dumps(jpegs, protocol=pickle.HIGHEST_PROTOCOL))
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
        report.skip(item.source.path, f"skipped: {prepared.skipped}")
        return report
    report.count("videos_built")
    if item.numbers is not None:
        missing = np.setdiff1d(item.numbers, prepared.available)
        if len(missing):
            report.problem(item.source.path, f"{len(missing)} labelled frame(s) without image "
                           f"({frame_ranges(missing)}): previous image used, valid = 0")
            report.count("frames_missing", len(missing))
    return report


def _beam_prepare(indexed_job) -> str:
    """Beam worker of the preparation pipeline: crops to the job's cache path; returns one JSON
    line, the video's index and its `Prepared`."""
    import apache_beam as beam

    i, job = indexed_job
    prepared = _prepare_to_cache(job)
    beam.metrics.Metrics.counter("auvmae", "videos_skipped" if prepared.skipped else "videos_built").inc()
    return json.dumps({"index": i, **prepared.to_json()})


def _beam_clips(job, params: ClipParams, aug: bool):
    """Beam worker of TFDS's pipeline: the clips of one prepared video, read from the cache."""
    item, path = job
    jpegs = pickle.loads(epath.Path(path).read_bytes())
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
        self._beam_runner, self._beam_options = download_config.beam_runner, download_config.beam_options
        self._use_beam = self._beam_runner is not None or self._beam_options is not None
        # Beside the output (crops need as much disk as the records), where every Beam worker
        # can write too (a gs:// data_dir on a cluster).
        if self._use_beam:
            self._cache_dir = os.path.join(self._data_dir_root, f".auvmae_crops_{uuid.uuid4().hex}")
            epath.Path(self._cache_dir).mkdir(parents=True, exist_ok=True)
        else:
            os.makedirs(self._data_dir_root, exist_ok=True)
            self._cache_dir = tempfile.mkdtemp(prefix=".auvmae_crops_", dir=self._data_dir_root)
        try:
            return super()._generate_splits(dl_manager, download_config)
        finally:
            if epath.Path(self._cache_dir).exists():
                epath.Path(self._cache_dir).rmtree()

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

    def _cache_path(self, i: int) -> str:
        return os.path.join(self._cache_dir, f"{i:07d}.pkl")

    def _prepare_all(self, items: list[VideoItem], params: ClipParams) -> list[Prepared]:
        """Every video prepared into the cache (locally or on Beam); their reports merged, in order."""
        jobs = [(it, params, self._cache_path(i)) for i, it in enumerate(items)]
        if self._use_beam:
            prepared = self._prepare_with_beam(jobs)
        elif self.num_workers > 1 and len(jobs) > 1:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
            with ctx.Pool(min(self.num_workers, len(jobs))) as pool:
                prepared = list(pool.imap(_prepare_to_cache, jobs))
        else:
            prepared = [_prepare_to_cache(j) for j in jobs]
        for it, p in zip(items, prepared):
            report = video_report(it, p)
            for w in report.warnings:
                log.warning("%s", w)
            self.report.merge(report)
        return prepared

    def _prepare_with_beam(self, jobs) -> list[Prepared]:
        """A Beam pipeline of its own, run before TFDS's: only then are the splits that will have
        examples known (TFDS's Beam writer fails the whole build on an empty split)."""
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions, TypeOptions

        options = self._beam_options or PipelineOptions()
        options.view_as(TypeOptions).pipeline_type_check = False  # as TFDS does: items are not typed
        results = os.path.join(self._cache_dir, "prepared")
        with beam.Pipeline(runner=self._beam_runner, options=options) as pipeline:
            _ = (pipeline | "ListVideos" >> beam.Create(list(enumerate(jobs)))
                 | "Spread" >> beam.Reshuffle()  # one video per work item, not all fused on one worker
                 | "PrepareVideos" >> beam.Map(_beam_prepare)
                 | "WriteResults" >> beam.io.WriteToText(results, file_name_suffix=".jsonl"))
        found = {}
        for shard in epath.Path(self._cache_dir).glob("prepared*.jsonl"):
            for line in shard.read_text().splitlines():
                d = json.loads(line)
                found[d["index"]] = Prepared.from_json(d)
        # None missing unless a worker died outside `prepare` (out of memory, killed)
        return [found.get(i) or Prepared(None, BuildReport(), "no result from its Beam worker")
                for i in range(len(jobs))]

    def _generate_examples(self, items, params: ClipParams, aug: bool):
        """Clips of `items` (`(index, VideoItem)` of prepared videos), cut from the cache: a Beam
        `PTransform` under Beam, else a generator."""
        if self._use_beam:
            import apache_beam as beam

            jobs = [(item, self._cache_path(i)) for i, item in items]
            return (beam.Create(jobs) | beam.Reshuffle()
                    | beam.FlatMap(_beam_clips, params=params, aug=aug))
        return self._cached_examples(items, params, aug)

    def _cached_examples(self, items, params, aug):
        for i, item in items:
            path = self._cache_path(i)
            with open(path, "rb") as f:
                jpegs = pickle.load(f)
            if aug or i in self._last_use:
                os.remove(path)
            yield from clip_examples(item, jpegs, params, aug)


def frame_ranges(numbers: np.ndarray, limit: int = 5) -> str:
    """'12-15, 40' for sorted frame numbers (first `limit` runs)."""
    runs = [(int(numbers[lo]), int(numbers[hi - 1])) for lo, hi in segments(np.asarray(numbers))]
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:limit])
    return text + (", ..." if len(runs) > limit else "")
